//! The acknowledgement-token key, kept beside the store (`ack.key`, 0600).
//! Tokens are derived from it, so links in messages already sent keep
//! working across restarts while the database never holds a usable token.

use std::io::Write;
use std::path::Path;

use super::StoreError;
use crate::domain::AckKey;

pub fn load_or_create(dir: &Path) -> Result<AckKey, StoreError> {
    let path = dir.join("ack.key");
    let err = |e: std::io::Error| StoreError::Open {
        path: path.clone(),
        reason: e.to_string(),
    };
    match std::fs::read(&path) {
        Ok(b) if b.len() == 32 => {
            let mut k = [0u8; 32];
            k.copy_from_slice(&b);
            return Ok(AckKey::from_bytes(k));
        }
        Ok(b) => {
            return Err(StoreError::Corrupt(format!(
                "{} holds {} bytes, not 32; restore it from backup (links already sent depend on it)",
                path.display(),
                b.len()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    std::fs::create_dir_all(dir).map_err(err)?;
    let key = AckKey::generate().map_err(|e| StoreError::Corrupt(format!("no randomness: {e}")))?;
    // Written to a temporary name and renamed, so a crash never leaves half a key.
    let tmp = dir.join("ack.key.tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(err)?;
        f.write_all(key.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, &path).map_err(err)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_key_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let a = super::load_or_create(dir.path()).unwrap();
        let b = super::load_or_create(dir.path()).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
        std::fs::write(dir.path().join("ack.key"), b"short").unwrap();
        assert!(super::load_or_create(dir.path()).is_err());
    }
}
