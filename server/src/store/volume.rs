//! A storage group on a volume of its own (a performance tier): the checks
//! before ternd writes there, and the volume file that proves, at every
//! start, that the directory is the volume it was.
//!
//! The volume file `tern-volume` holds the group's name and a random id
//! that the catalog keeps too. A volume that is not mounted leaves an empty
//! mount point behind, with no such file: ternd then refuses to start
//! rather than write packs onto the disk underneath.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use tern_core::names::GroupName;

use super::records::GroupVolume;
use super::{Result, StoreError};

/// The name of the volume file in a group's directory.
pub const VOLUME_FILE: &str = "tern-volume";
/// The first line of a volume file.
const MAGIC: &str = "tern storage group volume 1";
/// Longer volume files are not ours.
const MAX_VOLUME_FILE: u64 = 4096;

/// Checks that `dir` may hold group `group`'s packs, and marks it with a
/// new volume file. `data` is the data directory.
pub fn claim(dir: &Path, group: &GroupName, data: &Path) -> Result<GroupVolume> {
    let invalid = |why: String| StoreError::Invalid(format!("{}: {why}", dir.display()));
    if !dir.is_absolute() {
        return Err(invalid("give an absolute path".into()));
    }
    let meta = fs::metadata(dir).map_err(|e| invalid(format!("{e}")))?;
    if !meta.is_dir() {
        return Err(invalid("not a directory".into()));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(invalid(
            "it is world-writable: any local user could replace the packs; chmod o-w it first"
                .into(),
        ));
    }
    let dir = dir.canonicalize().map_err(|e| invalid(format!("{e}")))?;
    if let Ok(data) = data.canonicalize() {
        if dir.starts_with(&data) || data.starts_with(&dir) {
            return Err(invalid(
                "it overlaps the data directory; give a directory of another volume".into(),
            ));
        }
    }
    if dir.join(VOLUME_FILE).exists() {
        let held = read(&dir)
            .map(|(g, _)| format!("storage group {g}"))
            .unwrap_or_else(|e| format!("an unreadable volume file ({e})"));
        return Err(invalid(format!(
            "it already holds {held}; give each group a directory of its own"
        )));
    }
    if fs::read_dir(&dir)
        .map_err(|e| invalid(format!("{e}")))?
        .next()
        .is_some()
    {
        return Err(invalid(
            "it is not empty; give the group an empty directory".into(),
        ));
    }
    let id = random_id()?;
    write(&dir, group, &id).map_err(|e| invalid(format!("not writable by ternd: {e}")))?;
    Ok(GroupVolume { path: dir, id })
}

/// Checks at start that `vol` is the volume group `group` was given: its
/// volume file is there and holds the same id.
pub fn check(vol: &GroupVolume, group: &str) -> Result<()> {
    let offline = |why: String| {
        StoreError::Invalid(format!(
            "storage group {group}: {} {why}; ternd will not write into it (is the volume \
             mounted?)",
            vol.path.display()
        ))
    };
    match read(&vol.path) {
        Ok((_, id)) if id == vol.id => Ok(()),
        Ok((g, _)) => Err(offline(format!(
            "holds the volume file of another group ({g})"
        ))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Err(offline(format!("has no {VOLUME_FILE} file")))
        }
        Err(e) => Err(offline(format!(
            "has an unreadable {VOLUME_FILE} file ({e})"
        ))),
    }
}

/// Deletes the volume file of a group being removed.
pub fn release(vol: &GroupVolume) -> io::Result<()> {
    match fs::remove_file(vol.path.join(VOLUME_FILE)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => File::open(&vol.path)?.sync_all(),
    }
}

/// The packs directory of a volume.
pub fn packs_dir(vol: &GroupVolume) -> PathBuf {
    vol.path.join("packs")
}

fn write(dir: &Path, group: &GroupName, id: &str) -> io::Result<()> {
    let path = dir.join(VOLUME_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let done = f
        .write_all(format!("{MAGIC}\ngroup {group}\nid {id}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| File::open(dir)?.sync_all());
    if done.is_err() {
        let _ = fs::remove_file(&path);
    }
    done
}

/// (group name, id) of the volume file in `dir`.
fn read(dir: &Path) -> io::Result<(String, String)> {
    let path = dir.join(VOLUME_FILE);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "not a tern volume file");
    if fs::metadata(&path)?.len() > MAX_VOLUME_FILE {
        return Err(bad());
    }
    let text = fs::read_to_string(&path)?;
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(bad());
    }
    let group = lines.next().and_then(|l| l.strip_prefix("group "));
    let id = lines.next().and_then(|l| l.strip_prefix("id "));
    match (group, id) {
        (Some(g), Some(i)) => Ok((g.to_string(), i.to_string())),
        _ => Err(bad()),
    }
}

fn random_id() -> Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| StoreError::Io(io::Error::other("no randomness for a volume id")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn group(n: &str) -> GroupName {
        GroupName::new(n).unwrap()
    }

    #[test]
    fn a_claimed_volume_checks_and_an_empty_mount_point_does_not() {
        let data = tempfile::tempdir().unwrap();
        let vol_dir = tempfile::tempdir().unwrap();
        fs::set_permissions(vol_dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let vol = claim(vol_dir.path(), &group("fast"), data.path()).unwrap();
        check(&vol, "fast").unwrap();
        // Claimed twice: refused.
        let again = claim(vol_dir.path(), &group("other"), data.path()).unwrap_err();
        assert!(again.to_string().contains("storage group fast"), "{again}");
        // Another id (another volume mounted there): refused.
        let other = GroupVolume {
            id: "00".into(),
            ..vol.clone()
        };
        assert!(check(&other, "fast").is_err());
        // The file gone (the volume unmounted): refused, saying so.
        release(&vol).unwrap();
        let gone = check(&vol, "fast").unwrap_err().to_string();
        assert!(gone.contains("mounted"), "{gone}");
    }

    #[test]
    fn unsafe_directories_are_refused() {
        let data = tempfile::tempdir().unwrap();
        let open = tempfile::tempdir().unwrap();
        fs::set_permissions(open.path(), fs::Permissions::from_mode(0o777)).unwrap();
        let e = claim(open.path(), &group("g"), data.path()).unwrap_err();
        assert!(e.to_string().contains("world-writable"), "{e}");
        let inside = data.path().join("sub");
        fs::create_dir(&inside).unwrap();
        let e = claim(&inside, &group("g"), data.path()).unwrap_err();
        assert!(e.to_string().contains("overlaps"), "{e}");
        let full = tempfile::tempdir().unwrap();
        fs::write(full.path().join("x"), b"x").unwrap();
        let e = claim(full.path(), &group("g"), data.path()).unwrap_err();
        assert!(e.to_string().contains("not empty"), "{e}");
        assert!(claim(Path::new("rel/dir"), &group("g"), data.path()).is_err());
    }
}
