//! `tern synth`: a synthetic full, built on the server from extents of
//! images it holds and literal bytes from files.

use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tern_agent::WriteMode;

use super::{connect, report, Cli};

/// One piece of a synthetic image, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// `[offset, offset + len)` of a committed image; `container` is the
    /// image's own container when the spec names none.
    Extent {
        container: Option<String>,
        image: String,
        offset: u64,
        len: u64,
    },
    /// The bytes of a file.
    File(PathBuf),
}

/// Parses `IMAGE:OFFSET:LEN`, `CONTAINER/IMAGE:OFFSET:LEN` (a container
/// may itself be `GROUP/NAME`) or `@FILE`.
pub(crate) fn parse_piece(spec: &str) -> Result<Piece, String> {
    if let Some(path) = spec.strip_prefix('@') {
        if path.is_empty() {
            return Err("@FILE needs a file name".into());
        }
        return Ok(Piece::File(PathBuf::from(path)));
    }
    let usage = || format!("{spec:?} is not IMAGE:OFFSET:LEN, CONTAINER/IMAGE:OFFSET:LEN or @FILE");
    let mut parts = spec.rsplitn(3, ':');
    let (Some(len), Some(offset), Some(source)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(usage());
    };
    let number = |what: &str, v: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("{what} {v:?} of {spec:?} is not a number of bytes"))
    };
    let (offset, len) = (number("offset", offset)?, number("length", len)?);
    let (container, image) = match source.rsplit_once('/') {
        Some((c, i)) => (Some(c.to_string()), i.to_string()),
        None => (None, source.to_string()),
    };
    if image.is_empty() || container.as_deref() == Some("") {
        return Err(usage());
    }
    Ok(Piece::Extent {
        container,
        image,
        offset,
        len,
    })
}

pub(crate) fn synth(cli: &Cli, container: &str, name: &str, pieces: &[Piece]) -> Result<()> {
    if pieces.is_empty() {
        bail!("nothing to build: give the pieces with --from");
    }
    let client = connect(cli, WriteMode::Dedup)?;
    let started = Instant::now();
    let mut writer = client
        .create_image(container, name, &[])
        .with_context(|| format!("creating image {container}/{name}"))?;
    let (mut referenced, mut sliced, mut literal) = (0u64, 0u64, 0u64);
    for piece in pieces {
        match piece {
            Piece::Extent {
                container: from,
                image,
                offset,
                len,
            } => {
                let from = from.as_deref().unwrap_or(container);
                let done = writer
                    .write_from(from, image, *offset, *len)
                    .with_context(|| {
                        format!("appending {len} bytes of {from}/{image} at {offset}")
                    })?;
                referenced += done.referenced_bytes;
                sliced += done.sliced_bytes;
            }
            Piece::File(path) => {
                let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
                literal += writer
                    .copy_from(f, |_| {})
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    let done = writer
        .commit()
        .with_context(|| format!("committing {container}/{name}"))?;
    let secs = started.elapsed().as_secs_f64();
    let s = done.stats;
    report(
        cli,
        json!({
            "container": container, "name": name, "logical_bytes": s.logical_bytes,
            "referenced_bytes": referenced, "sliced_bytes": sliced, "literal_bytes": literal,
            "chunks": s.chunks, "new_chunks": s.new_chunks, "new_bytes": s.new_stored_bytes,
            "sent_bytes": done.sent_bytes, "wire_bytes": client.bytes_sent(), "seconds": secs,
        }),
        &format!(
            "built {container}/{name}: {} logical bytes, {referenced} referenced and {sliced} \
             sliced on the server, {literal} written from files, {} bytes sent, {secs:.2} s",
            s.logical_bytes, done.sent_bytes
        ),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(container: Option<&str>, image: &str, offset: u64, len: u64) -> Piece {
        Piece::Extent {
            container: container.map(str::to_string),
            image: image.to_string(),
            offset,
            len,
        }
    }

    #[test]
    fn pieces_parse_from_the_right() {
        assert_eq!(parse_piece("v1:0:4096"), Ok(extent(None, "v1", 0, 4096)));
        assert_eq!(
            parse_piece("c2/v1:10:20"),
            Ok(extent(Some("c2"), "v1", 10, 20))
        );
        assert_eq!(
            parse_piece("g/c2/a:b:1:2"),
            Ok(extent(Some("g/c2"), "a:b", 1, 2))
        );
        assert_eq!(
            parse_piece("@edits.bin"),
            Ok(Piece::File("edits.bin".into()))
        );
        for bad in [
            "v1:0", "v1:x:1", ":1:2", "/v1:1:2", "c/:1:2", "@", "v1:1:-2",
        ] {
            assert!(parse_piece(bad).is_err(), "{bad} parsed");
        }
    }
}
