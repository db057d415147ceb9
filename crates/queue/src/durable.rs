//! Small files replaced whole: the MTA-STS cache, TLSRPT counts, the
//! directory replica's state, a rewritten configuration, generated TLS
//! keys, audit reports.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `data` to a temporary file beside `path` (with `mode`, if
/// given), syncs it, renames it over `path` and syncs the directory: after
/// a crash `path` holds the old bytes or the new ones, never half, and a
/// reader never sees a partly written file.
pub fn replace_file(path: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a file name", path.display()),
        )
    })?;
    // Its own temporary file per call: two writers of one path must not
    // write into the same one (the last rename wins, whole).
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(
        ".{}.{}.{seq}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let mut open = OpenOptions::new();
    open.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(mode);
    }
    let mut f = open.open(&tmp)?;
    #[cfg(unix)]
    if let Some(mode) = mode {
        // The mode given to open() is masked by the umask; this is not.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
    }
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_with_the_mode_and_leaves_no_temporary_file() {
        let dir = std::env::temp_dir().join(format!("palisade-durable-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        replace_file(&path, b"old", None).unwrap();
        replace_file(&path, b"new", Some(0o600)).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let left: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("state.json")]);
        assert!(replace_file(Path::new("/"), b"x", None).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
