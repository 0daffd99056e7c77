//! The output directory's marker file, `OUT/.buffer-persist`.
//!
//! A batch's file name depends on the format and compression, so persisters sharing one
//! output directory must agree on them, or the same batch could be written under two names.
//! The first persister writes its settings to the marker; the others refuse to start when
//! theirs differ.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};

use crate::config::PersistConfig;
use crate::error::{Error, Result};

/// The marker's file name inside the output directory.
pub const MARKER_FILE: &str = ".buffer-persist";

/// Creates the output directory and its marker, or checks the marker that is there.
pub(crate) fn check_or_write(config: &PersistConfig) -> Result<()> {
    let out = &config.out_dir;
    fs::create_dir_all(out).map_err(Error::io("create output directory", out))?;
    let path = out.join(MARKER_FILE);
    let wanted = format!(
        "format={}\ncompression={}\n",
        config.format, config.compression
    );
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut file) => {
            file.write_all(wanted.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(Error::io("write", &path))?;
            crate::writer::sync_dir(out)?;
            Ok(())
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            let found = fs::read_to_string(&path).map_err(Error::io("read", &path))?;
            if found == wanted {
                Ok(())
            } else {
                Err(Error::OutputMismatch {
                    path,
                    reason: format!(
                        "this output directory is written as {:?}, not {:?}; persisters sharing a directory must use the same --format and --compression",
                        found.trim().replace('\n', ", "),
                        wanted.trim().replace('\n', ", ")
                    ),
                })
            }
        }
        Err(err) => Err(Error::io("create", &path)(err)),
    }
}
