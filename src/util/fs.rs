//! Files that hold results or journals: readable by their owner only.

use std::fs::{self, File};
use std::io;
use std::path::Path;

/// Creates (or truncates) a file readable by its owner only: results are private data.
///
/// # Errors
/// The file cannot be created or its mode set.
pub fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // The mode above applies only when the file is new: a file left by an earlier run keeps its
    // own, so set it again.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// A file written beside its target (`TARGET.partial`) and renamed over it by
/// [`Replacement::commit`]: a reader never sees half a file, and a crash leaves the target as
/// it was.
///
/// The partial file is created with `O_EXCL` (`create_new`), so a symlink planted at its path
/// is never followed: a stale one is removed (the link, not what it points to) and the create
/// tried once more; if that fails too, the write is refused.
#[derive(Debug)]
pub struct Replacement {
    partial: std::path::PathBuf,
    target: std::path::PathBuf,
    file: File,
}

impl Replacement {
    /// Creates `TARGET.partial`, mode 0600.
    ///
    /// # Errors
    /// The partial file cannot be created (twice), or something other than a file or a link
    /// sits at its path.
    pub fn create(target: &Path) -> io::Result<Replacement> {
        let mut name = target.as_os_str().to_owned();
        name.push(".partial");
        let partial = std::path::PathBuf::from(name);
        let file = match create_new_private(&partial) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Left by a crashed run, or planted: remove it without following it.
                if fs::symlink_metadata(&partial)?.is_dir() {
                    return Err(e);
                }
                fs::remove_file(&partial)?;
                create_new_private(&partial)?
            }
            other => other?,
        };
        Ok(Replacement {
            partial,
            target: target.to_owned(),
            file,
        })
    }

    /// The file to write into.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Flushes the file to disk, renames it over the target, and flushes the directory, so that
    /// after a crash the target is either the old file or the whole new one.
    ///
    /// # Errors
    /// Syncing or renaming failed.
    pub fn commit(self) -> io::Result<()> {
        self.file.sync_all()?;
        drop(self.file);
        fs::rename(&self.partial, &self.target)?;
        let dir = match self.target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()
    }
}

/// Creates a new file readable by its owner only, open for writing and reading; fails if
/// anything (a file, a link) is at `path` already.
///
/// # Errors
/// Something is at `path`, or the file cannot be created.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Whether `output` is the database at `db` or one of its -wal, -shm or -journal files (the
/// same file, through any path or link). Writing there would replace the live journal.
pub fn is_database_file(output: &Path, db: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(out) = fs::metadata(output) else {
        return false;
    };
    ["", "-wal", "-shm", "-journal"].iter().any(|suffix| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        fs::metadata(Path::new(&name)).is_ok_and(|m| m.dev() == out.dev() && m.ino() == out.ino())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_at_the_partial_path_is_never_followed() {
        let dir = tempfile::tempdir().expect("dir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "keep me").expect("write");
        let target = dir.path().join("out.csv");
        std::os::unix::fs::symlink(&victim, dir.path().join("out.csv.partial")).expect("link");
        let mut replacement = Replacement::create(&target).expect("create");
        io::Write::write_all(replacement.file(), b"new").expect("write");
        replacement.commit().expect("commit");
        assert_eq!(fs::read_to_string(&victim).expect("read"), "keep me");
        assert_eq!(fs::read_to_string(&target).expect("read"), "new");
        assert!(!fs::symlink_metadata(&target).expect("meta").is_symlink());
    }

    #[test]
    fn the_database_and_its_wal_are_recognised_through_links() {
        let dir = tempfile::tempdir().expect("dir");
        let db = dir.path().join("runner.db");
        fs::write(&db, "db").expect("write");
        fs::write(dir.path().join("runner.db-wal"), "wal").expect("write");
        let link = dir.path().join("link.csv");
        std::os::unix::fs::symlink(&db, &link).expect("link");
        assert!(is_database_file(&db, &db));
        assert!(is_database_file(&link, &db));
        assert!(is_database_file(&dir.path().join("runner.db-wal"), &db));
        assert!(!is_database_file(&dir.path().join("other.csv"), &db));
    }
}
