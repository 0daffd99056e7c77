//! The local output: a batch becomes one file under `OUT`, written by `writer.rs` (temporary
//! file, fsync, no-clobber link, fsync of the directory).

use std::path::PathBuf;
use std::sync::Arc;

use buffer_core::PreparedBatch;

use crate::config::PersistConfig;
use crate::error::Result;
use crate::output::blocking;
use crate::paths::PathTemplate;
use crate::writer::{BatchFile, FileLayout, SinkFactory};

/// Creates the batch's temporary file beside its target (the template's path under `out`),
/// every missing directory level made durable.
///
/// # Errors
/// I/O errors creating the directory or the file.
pub(crate) async fn create(
    out: PathBuf,
    open: Arc<SinkFactory>,
    template: &PathTemplate,
    config: &PersistConfig,
    batch: &PreparedBatch,
    layout: FileLayout,
) -> Result<BatchFile> {
    // The path is a pure function of the batch (its store, id and frozen first write), so
    // every attempt, by any persister, before or after a crash, writes the same file.
    let target = template.batch_path(&out, batch, config.format, config.compression);
    let (prepared, compression) = (batch.clone(), config.compression);
    blocking(move || BatchFile::create(&out, target, &prepared, compression, layout, &*open)).await
}
