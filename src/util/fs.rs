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
