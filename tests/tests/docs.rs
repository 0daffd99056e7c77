//! The docs cannot rot: every `sh` block of README.md and docs/*.md is executed, and every
//! `sh skip` block names the test that runs its equivalent (the convention of docs/README.md).
//!
//! Each file's `sh` blocks run in order as one `bash -euo pipefail` script in a fresh empty
//! temporary directory, with the built `buffer-persist` and `buffer-tui` first on `PATH` and
//! `BUFFER_REDIS` (and `REDIS_URL`) the URL of a private, empty `redis-server`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use buffer_tests::RedisServer;

/// A fenced block of a Markdown file.
#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    /// The info string, trimmed (`sh`, `sh skip`, `rust,no_run`, …).
    info: String,
    body: String,
    /// The line right after the closing fence, if any.
    after: Option<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// README.md and every docs/*.md, sorted.
fn doc_files() -> Vec<PathBuf> {
    let root = repo_root();
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    files.sort();
    files.insert(0, root.join("README.md"));
    files
}

/// The fenced blocks of `markdown`, or the line of a fence left open.
fn blocks(markdown: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let Some(info) = lines[index].strip_prefix("```") else {
            index += 1;
            continue;
        };
        let start = index;
        let close = lines[start + 1..]
            .iter()
            .position(|line| line.trim_end() == "```")
            .map(|offset| start + 1 + offset)
            .ok_or_else(|| format!("line {}: a fence that is never closed", start + 1))?;
        found.push(Block {
            line: start + 1,
            info: info.trim().to_string(),
            body: lines[start + 1..close].join("\n"),
            after: lines.get(close + 1).map(|line| line.to_string()),
        });
        index = close + 1;
    }
    Ok(found)
}

/// Checks the rules of docs/README.md on `markdown`'s blocks (not their execution): no shell
/// block under another name than `sh`, and every `sh skip` block followed by a
/// `<!-- tested by: path::test, … -->` comment whose tests exist under `root`. Returns every
/// violation, each naming its line.
fn violations(markdown: &str, root: &Path) -> Vec<String> {
    let blocks = match blocks(markdown) {
        Ok(blocks) => blocks,
        Err(error) => return vec![error],
    };
    let mut found = Vec::new();
    for block in &blocks {
        let language = block.info.split([' ', ',']).next().unwrap_or("");
        if ["bash", "shell", "zsh", "shell-session"].contains(&language) {
            found.push(format!(
                "line {}: a `{language}` block: shell commands go in `sh` (executed) or `sh skip` blocks",
                block.line
            ));
        }
        if block.info != "sh skip" {
            continue;
        }
        let names = block
            .after
            .as_deref()
            .and_then(|line| line.trim().strip_prefix("<!-- tested by:"))
            .and_then(|rest| rest.strip_suffix("-->"));
        let Some(names) = names else {
            found.push(format!(
                "line {}: a `sh skip` block not followed by `<!-- tested by: path::test -->`",
                block.line
            ));
            continue;
        };
        for name in names.split(',').map(str::trim) {
            if let Err(error) = test_exists(root, name) {
                found.push(format!("line {}: {error}", block.line));
            }
        }
    }
    found
}

/// Whether `name` (`path/to/file.rs::test_name`) names a function in that file.
fn test_exists(root: &Path, name: &str) -> Result<(), String> {
    let (path, function) = name
        .split_once("::")
        .ok_or_else(|| format!("`{name}` is not of the form path/to/file.rs::test_name"))?;
    let source = std::fs::read_to_string(root.join(path))
        .map_err(|error| format!("`{name}`: cannot read {path}: {error}"))?;
    let defined = source.lines().any(|line| {
        let line = line.trim_start();
        ["fn ", "async fn ", "pub fn ", "pub async fn "]
            .iter()
            .any(|prefix| {
                line.strip_prefix(prefix)
                    .and_then(|rest| rest.strip_prefix(function))
                    .is_some_and(|rest| rest.starts_with('(') || rest.starts_with('<'))
            })
    });
    if defined {
        Ok(())
    } else {
        Err(format!("`{name}`: no function `{function}` in {path}"))
    }
}

/// The directory of the built binaries: this test's executable is in `<target>/<profile>/deps`.
fn binaries_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for binary in ["buffer-persist", "buffer-tui"] {
        assert!(
            dir.join(binary).is_file(),
            "{} is not built: run `cargo build -p buffer-persist -p buffer-tui` first \
             (`cargo test --workspace` builds it)",
            dir.join(binary).display()
        );
    }
    dir
}

#[test]
fn every_doc_file_follows_the_shell_block_rules() {
    let root = repo_root();
    let mut all = Vec::new();
    for file in doc_files() {
        let markdown = std::fs::read_to_string(&file).unwrap();
        for violation in violations(&markdown, &root) {
            all.push(format!("{}: {violation}", file.display()));
        }
    }
    assert!(all.is_empty(), "{}", all.join("\n"));
}

#[test]
fn every_sh_block_of_the_docs_runs_and_succeeds() {
    let bin = binaries_dir();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut scripts = 0;
    for file in doc_files() {
        let markdown = std::fs::read_to_string(&file).unwrap();
        let blocks = blocks(&markdown).unwrap();
        let executed: Vec<&Block> = blocks.iter().filter(|block| block.info == "sh").collect();
        if executed.is_empty() {
            continue;
        }
        scripts += 1;
        let script = executed
            .iter()
            .map(|block| format!("# {}:{}\n{}\n", file.display(), block.line, block.body))
            .collect::<String>();
        let redis = RedisServer::start();
        let cwd = tempfile::tempdir().unwrap();
        let mut child = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(cwd.path())
            .env("PATH", &path)
            .env("BUFFER_REDIS", redis.url())
            .env("REDIS_URL", redis.url())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read both pipes while waiting, so a chatty script never blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap_or_default());
        let err = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                child.wait().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        match status {
            Some(status) if status.success() => {}
            Some(status) => panic!(
                "the sh blocks of {} failed ({status}):\n--- script\n{script}\n--- stdout\n{out}\n--- stderr\n{err}",
                file.display()
            ),
            None => panic!(
                "the sh blocks of {} ran over 90 s:\n--- stdout\n{out}\n--- stderr\n{err}",
                file.display()
            ),
        }
    }
    assert!(
        scripts > 0,
        "no doc file has an `sh` block: nothing was run"
    );
}

#[test]
fn a_sh_skip_block_without_its_comment_is_a_violation() {
    let markdown = "# t\n\n```sh skip\nbuffer-persist run --out s3://b/p\n```\n\nprose\n";
    let found = violations(markdown, &repo_root());
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("line 3:"), "{found:?}");
}

#[test]
fn a_tested_by_comment_naming_a_missing_test_is_a_violation() {
    let root = repo_root();
    let good = "```sh skip\nx\n```\n<!-- tested by: tests/tests/docs.rs::a_tested_by_comment_naming_a_missing_test_is_a_violation -->\n";
    assert_eq!(violations(good, &root), Vec::<String>::new());
    let missing_test =
        "```sh skip\nx\n```\n<!-- tested by: tests/tests/docs.rs::no_such_test -->\n";
    let found = violations(missing_test, &root);
    assert!(found[0].contains("no function `no_such_test`"), "{found:?}");
    let missing_file = "```sh skip\nx\n```\n<!-- tested by: tests/tests/nope.rs::t -->\n";
    let found = violations(missing_file, &root);
    assert!(
        found[0].contains("cannot read tests/tests/nope.rs"),
        "{found:?}"
    );
}

#[test]
fn a_bash_block_is_a_violation_and_an_unclosed_fence_is_reported() {
    let root = repo_root();
    let found = violations("```bash\nls\n```\n", &root);
    assert!(found[0].contains("a `bash` block"), "{found:?}");
    let found = violations("text\n```sh\nls\n", &root);
    assert_eq!(
        found,
        vec!["line 2: a fence that is never closed".to_string()]
    );
}

/// The install recipe of docs/operations.md ("Installing") names real things: a `dist`
/// profile that strips, and a systemd unit whose command is `buffer-persist run` and whose
/// every `BUFFER_*` setting is one `buffer-persist run` reads. (The dist build itself is not
/// run here: CI never builds it; its figures are measured by hand, as the chapter says.)
#[test]
fn the_install_recipe_names_a_dist_profile_and_a_unit_the_binary_understands() {
    let root = repo_root();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let dist = manifest
        .split("[profile.dist]")
        .nth(1)
        .expect("Cargo.toml has a [profile.dist]");
    let dist = dist.split("\n[").next().unwrap();
    for setting in ["inherits = \"release\"", "strip = true", "lto = "] {
        assert!(
            dist.contains(setting),
            "[profile.dist] lacks {setting}: {dist}"
        );
    }
    let unit =
        std::fs::read_to_string(root.join("buffer-persist/deploy/buffer-persist.service")).unwrap();
    assert!(
        unit.lines()
            .any(|line| line == "ExecStart=/usr/local/bin/buffer-persist run"),
        "{unit}"
    );
    let help = Command::new(binaries_dir().join("buffer-persist"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for line in unit.lines().filter(|line| line.starts_with("Environment=")) {
        let name = line
            .trim_start_matches("Environment=")
            .split('=')
            .next()
            .unwrap();
        assert!(
            help.contains(&format!("env: {name}=")) || help.contains(&format!("env: {name}]")),
            "{name} of the unit is not read by `buffer-persist run`:\n{help}"
        );
    }
    let operations = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    for command in [
        "cargo install --locked --profile dist --path buffer-persist",
        "cargo install --locked --profile dist --path buffer-tui",
        "buffer-persist/deploy/buffer-persist.service",
    ] {
        assert!(
            operations.contains(command),
            "docs/operations.md lacks {command}"
        );
    }
}
