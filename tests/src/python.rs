//! The Python tools the suites need (moto's S3 server, DuckDB, pyarrow), in a private venv.
//!
//! The venv lives in `target/test-venv` and holds exactly `tests/requirements.txt`. `.ci/run`
//! makes it before the tests; on a developer machine the first test that needs it makes it
//! (about a minute, once), under a file lock so parallel test processes wait for one install.
//! `BUFFER_TEST_PYTHON` names another interpreter that already has the packages.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace")
        .to_path_buf()
}

/// The Python interpreter with every package of `tests/requirements.txt`, making the venv
/// when it is missing or was made from another requirements list. Panics, naming the failed
/// step, when Python or pip is not available.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("BUFFER_TEST_PYTHON") {
        return PathBuf::from(python);
    }
    let root = workspace_root();
    let venv = root.join("target").join("test-venv");
    let python = venv.join("bin").join("python");
    let requirements = root.join("tests").join("requirements.txt");
    let wanted = fs::read_to_string(&requirements).expect("read tests/requirements.txt");
    let stamp = venv.join("requirements.installed");
    if fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return python;
    }
    fs::create_dir_all(root.join("target")).expect("create target/");
    let lock =
        File::create(root.join("target").join("test-venv.lock")).expect("create the venv lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
        .expect("lock target/test-venv.lock");
    // Another process may have finished the install while this one waited for the lock.
    if fs::read_to_string(&stamp).is_ok_and(|installed| installed == wanted) {
        return python;
    }
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    );
    run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(&requirements),
        "pip install -r tests/requirements.txt",
    );
    fs::write(&stamp, &wanted).expect("write the venv stamp");
    python
}

fn run(command: &mut Command, what: &str) {
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{what} failed ({status}); the S3 and Parquet suites need it"),
        Err(err) => {
            panic!("{what} could not start: {err}; the S3 and Parquet suites need Python 3")
        }
    }
}
