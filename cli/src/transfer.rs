//! Moving image data: backup, restore (with progress bars and a partial
//! file renamed at the end), and the data-path benchmark.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::json;
use tern_agent::{Client, ClientError, WriteMode};
use tern_core::ChunkParams;

use super::{connect, report, Cli};
use crate::write_behind::WriteBehind;

fn progress(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = match total {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::no_length(),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

/// True if `container` holds an incomplete image `name` (one begun and not
/// committed, which `--resume` continues).
fn has_incomplete(client: &Client, container: &str, name: &str) -> Result<bool> {
    let (_, incomplete) = client
        .image_list_all(container, name)
        .with_context(|| format!("listing container {container}"))?;
    Ok(incomplete.iter().any(|i| i.name.as_str() == name))
}

pub(crate) fn backup(
    cli: &Cli,
    container: &str,
    name: &str,
    mode: WriteMode,
    resume: bool,
    input: &Path,
) -> Result<()> {
    let (mut source, total): (Box<dyn Read + Send>, Option<u64>) = if input.as_os_str() == "-" {
        (Box::new(io::stdin()), None)
    } else {
        let f = File::open(input).with_context(|| format!("opening {}", input.display()))?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let client = connect(cli, mode)?;
    let started = Instant::now();
    let (mut writer, offset) = if resume && has_incomplete(&client, container, name)? {
        client
            .resume_image(container, name)
            .with_context(|| format!("resuming {container}/{name}"))?
    } else {
        if resume {
            eprintln!("no incomplete image {container}/{name} to resume: starting a new one");
        }
        let w = client
            .create_image(container, name, &[])
            .with_context(|| format!("creating image {container}/{name}"))?;
        (w, 0)
    };
    if offset > 0 {
        skip(&mut source, offset, total)
            .with_context(|| format!("skipping to offset {offset} of {}", input.display()))?;
        if !cli.json {
            eprintln!("resuming {container}/{name} at offset {offset}");
        }
    }
    let bar = progress(total.map(|t| t.saturating_sub(offset)));
    let copied = writer.copy_from(source, |n| {
        if let Some(b) = &bar {
            b.inc(n);
        }
    });
    match copied {
        Ok(_) => {}
        Err(ClientError::Io(e)) => {
            return Err(e).with_context(|| format!("reading {}", input.display()))
        }
        Err(e) => return Err(e).with_context(|| format!("backing up to {container}/{name}")),
    }
    let done = writer
        .commit()
        .with_context(|| format!("committing {container}/{name}"))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    let s = done.stats;
    let mbps = s.logical_bytes as f64 / secs.max(1e-9) / 1e6;
    report(
        cli,
        json!({
            "container": container, "name": name, "resumed_at": offset, "logical_bytes": s.logical_bytes, "chunks": s.chunks,
            "new_chunks": s.new_chunks, "new_bytes": s.new_stored_bytes, "sent_bytes": done.sent_bytes,
            "wire_bytes": client.bytes_sent(), "dedup_ratio": done.dedup_ratio(), "seconds": secs, "mb_per_s": mbps,
        }),
        &format!(
            "backed up {container}/{name}: {} logical bytes, {} new bytes stored, {} bytes sent, {}, {:.1} MB/s",
            s.logical_bytes,
            s.new_stored_bytes,
            done.sent_bytes,
            match done.dedup_ratio() {
                r if r > 0.0 => format!("dedup ratio {r:.2}"),
                _ => "nothing new to store".to_string(),
            },
            mbps
        ),
    );
    Ok(())
}

/// Moves `source` past the first `offset` bytes, which the server already
/// holds (a file or a stream alike: read and dropped, at disk speed).
fn skip(source: &mut impl Read, offset: u64, total: Option<u64>) -> Result<()> {
    if let Some(t) = total.filter(|&t| t < offset) {
        bail!("the input holds {t} bytes, but the incomplete image already holds {offset}: it is not the same input");
    }
    let skipped = io::copy(&mut source.take(offset), &mut io::sink())?;
    if skipped < offset {
        bail!("the input ended after {skipped} bytes, before the resume offset {offset}");
    }
    Ok(())
}

pub(crate) fn restore(
    cli: &Cli,
    container: &str,
    name: &str,
    sync: bool,
    output: &Path,
) -> Result<()> {
    let client = connect(cli, WriteMode::Dedup)?;
    let started = Instant::now();
    let mut reader = client
        .open_image(container, name)
        .with_context(|| format!("opening {container}/{name}"))?;
    let to_stdout = output.as_os_str() == "-";
    let bar = if to_stdout {
        None
    } else {
        progress(Some(reader.size()))
    };
    let mut sink: Box<dyn Write> = if to_stdout {
        Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock()))
    } else {
        // Write beside the target and rename, so a failed restore leaves no
        // partial file. Unbuffered: whole chunks arrive, and a buffer would
        // add a copy of every byte (it cost 10% of restore speed).
        let file = File::create(partial(output))
            .with_context(|| format!("creating {}", output.display()))?;
        if sync {
            Box::new(WriteBehind::new(file))
        } else {
            Box::new(file)
        }
    };
    let n = match &bar {
        Some(b) => reader.copy_to(&mut b.wrap_write(&mut sink)),
        None => reader.copy_to(&mut sink),
    };
    let n = match n {
        Ok(n) => n,
        Err(e) => {
            drop(sink);
            if !to_stdout {
                let _ = std::fs::remove_file(partial(output));
            }
            return Err(e).with_context(|| format!("restoring {container}/{name}"));
        }
    };
    sink.flush()?;
    drop(sink);
    if !to_stdout {
        finish_file(output, sync).with_context(|| format!("writing {}", output.display()))?;
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let secs = started.elapsed().as_secs_f64();
    let mbps = n as f64 / secs.max(1e-9) / 1e6;
    let v = json!({"container": container, "name": name, "bytes": n, "seconds": secs, "mb_per_s": mbps,
        "wire_bytes_received": client.bytes_received()});
    if cli.json && to_stdout {
        eprintln!("{v}");
    } else if cli.json {
        println!("{v}");
    } else if !to_stdout {
        println!("restored {container}/{name}: {n} bytes, {mbps:.1} MB/s");
    }
    Ok(())
}

pub(crate) fn bench(
    cli: &Cli,
    local: bool,
    level: i32,
    input: Option<&Path>,
    upload_mib: u64,
) -> Result<()> {
    if !(1..=19).contains(&level) {
        bail!("--zstd-level {level} is not in 1..=19");
    }
    let data = match input {
        Some(p) => {
            let mut d = Vec::new();
            File::open(p)
                .and_then(|f| f.take(256 << 20).read_to_end(&mut d))
                .with_context(|| format!("reading {}", p.display()))?;
            if d.is_empty() {
                bail!("{} is empty", p.display());
            }
            d
        }
        None => crate::bench::sample_data(64 << 20),
    };
    let mut stages = crate::bench::local_stages(&data, ChunkParams::default(), level)?;
    if !local {
        let client = connect(cli, WriteMode::Dedup)?;
        stages.extend(crate::bench::network_stages(&client, upload_mib << 20)?);
    }
    if cli.json {
        println!("{}", serde_json::to_string(&stages)?);
        return Ok(());
    }
    println!(
        "{:<36} {:>12} {:>10}",
        "stage (one core each)", "MB/s", "ratio"
    );
    for s in &stages {
        let speed = if s.bytes == 0 {
            format!("{:.3} ms", s.seconds * 1e3)
        } else {
            format!("{:.1}", s.mb_per_s)
        };
        let ratio = s.ratio.map(|r| format!("{r:.3}")).unwrap_or_default();
        println!("{:<36} {:>12} {:>10}", s.stage, speed, ratio);
    }
    Ok(())
}

/// Puts a restored file in place: synced (unless asked not to) before the
/// rename, and the directory after it, so a restore reported as done
/// survives a power loss.
fn finish_file(output: &Path, sync: bool) -> io::Result<()> {
    if sync {
        File::open(partial(output))?.sync_all()?;
    }
    std::fs::rename(partial(output), output)?;
    if sync {
        let dir = match output.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn partial(output: &Path) -> PathBuf {
    let mut p = output.as_os_str().to_os_string();
    p.push(".tern-partial");
    PathBuf::from(p)
}
