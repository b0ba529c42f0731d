//! `demo` and `render`: the connector shown at work without an account.
//!
//! `demo` starts the built-in platform emulator on 127.0.0.1, runs a full `--once`
//! sync of every data type into a local folder through the same engine a real run
//! uses, and prints what landed. `render` prints the names a template gives.

use std::fs;
use std::io;
use std::path::Path;

use crate::config::{naming_from_env, Config};
use crate::emulator::{Emulator, EmulatorConfig};
use crate::env::{ConfigErrors, Env};
use crate::platform::Platform;
use crate::store::local::{LocalStore, STATE_DIR};
use crate::sync::{Engine, Mode};
use crate::task::{DataType, NameSource};
use crate::template::TaskFields;

/// The official image's default template.
pub const DEFAULT_TEMPLATE: &str =
    "{{due_date|yyyy}}/{{due_date|MM}}/{{due_date|dd}}/{{due_date|yyyyMMddHHmmss}}-{{task_id}}";

#[derive(Debug, Default, Clone)]
pub struct RenderOptions {
    pub due_date: Option<i64>,
    pub task_id: Option<String>,
    pub call_from: Option<String>,
    pub call_to: Option<String>,
    /// The platform's `fileName` for one of the task's files: shown beside the name the
    /// template gives that file.
    pub file_name: Option<String>,
}

/// The name of each file a task would get with the configured template, one line each.
pub fn render_names(env: &Env, opts: &RenderOptions) -> Result<Vec<String>, ConfigErrors> {
    let (template, types) = naming_from_env(env)?;
    let now = time::OffsetDateTime::now_utc();
    let fields = TaskFields {
        task_id: opts
            .task_id
            .as_deref()
            .unwrap_or("b808d74e-84b2-11ef-b864-0242ac120002"),
        due_date: Some(
            opts.due_date
                .unwrap_or((now.unix_timestamp_nanos() / 1_000_000) as i64),
        ),
        call_from: Some(opts.call_from.as_deref().unwrap_or("420123456789")),
        call_to: Some(opts.call_to.as_deref().unwrap_or("420987654321")),
    };
    let base = template.render(&fields).map_err(|e| {
        ConfigErrors(vec![crate::env::ConfigError::new(
            "SP_TASK_SYNC_FILE_NAME_TEMPLATE",
            None,
            crate::report::Report(&e).to_string(),
        )])
    })?;
    let mut lines = Vec::new();
    for t in types {
        let ks: &[usize] = match t {
            DataType::Recordings | DataType::Transcriptions => &[1, 2],
            _ => &[1],
        };
        for &k in ks {
            let name = format!("{base}{}", t.suffix(k));
            let check = match crate::template::check_name(&name) {
                Ok(()) => String::new(),
                Err(e) => format!("   <-- cannot be used: {e}"),
            };
            let which = if ks.len() > 1 {
                format!(" #{k}")
            } else {
                String::new()
            };
            lines.push(format!("{name}   ({}{which}){check}", t.name()));
        }
    }
    if let Some(platform) = &opts.file_name {
        lines.push(compare_with_platform(env, &base, platform));
    }
    Ok(lines)
}

/// The platform's `fileName` beside the template's name for the same file, and which
/// one `SP_TASK_SYNC_NAMES` stores.
fn compare_with_platform(env: &Env, base: &str, platform: &str) -> String {
    let Some((t, k)) = crate::task::suffix_from_file_name(platform) else {
        return format!(
            "platform fileName {platform:?}: its suffix names no data type, so it cannot be \
             compared (the connector uses it as it is)"
        );
    };
    let ours = format!("{base}{}", t.suffix(k));
    let source = env
        .get("SP_TASK_SYNC_NAMES")
        .and_then(NameSource::parse)
        .unwrap_or_default();
    if ours == platform {
        return format!("platform fileName {platform:?}: the same as the template's name");
    }
    let used = match source {
        NameSource::Template => &ours,
        NameSource::Platform => platform,
    };
    format!(
        "platform fileName {platform:?} DIFFERS from the template's {ours:?}; \
         SP_TASK_SYNC_NAMES={} stores {used:?}",
        source.name()
    )
}

/// Runs the demo into `dir`.
pub fn run(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let emulator = Emulator::start(EmulatorConfig::default())?;
    let token = EmulatorConfig::default().token;
    let all_types: Vec<&str> = DataType::ALL
        .iter()
        .filter(|t| **t != DataType::CommonMetadata)
        .map(|t| t.name())
        .collect();
    let all_types = all_types.join(",");
    let url = emulator.url();
    let dir_text = dir.display().to_string();
    let env = Env::from_pairs([
        ("SP_API_TOKEN", token.as_str()),
        ("SP_API_URL", url.as_str()),
        ("SP_TASK_SYNC_TAG", "demo"),
        ("SP_TASK_SYNC_FILE_NAME_TEMPLATE", DEFAULT_TEMPLATE),
        ("SP_TASK_SYNC_GET_DATA", all_types.as_str()),
        ("SP_TASK_SYNC_DELETE_DATA", "Recordings"),
        ("SP_TASK_SYNC_SAVE_TO", dir_text.as_str()),
    ]);
    let cfg = Config::from_env(&env)?;
    println!("demo: platform emulator on {url}; syncing every data type into {dir_text}/");
    let agent = crate::http::agent(cfg.http_timeout, cfg.concurrency);
    let store = LocalStore::open(dir)?;
    let platform = Platform::new(agent, &cfg.api.base_url(), cfg.token.clone());
    let summary = Engine::new(&cfg, platform, &store, Mode::Once).run()?;
    emulator.stop();
    println!("\ndemo: {summary}\n");
    let mut lines = Vec::new();
    tree(store.root(), store.root(), &mut lines)?;
    let shown = 40;
    for line in lines.iter().take(shown) {
        println!("  {line}");
    }
    if lines.len() > shown {
        println!("  … and {} more files", lines.len() - shown);
    }
    println!(
        "\nThe files are in {}/ (the connector's own state is in {STATE_DIR}/).",
        store.root().display()
    );
    Ok(())
}

/// Every file below `dir` (but the connector's own folder) with its size, sorted.
fn tree(root: &Path, dir: &Path, out: &mut Vec<String>) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == STATE_DIR) {
            continue;
        }
        if entry.file_type()?.is_dir() {
            tree(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(format!(
                "{:>10}  {}",
                entry.metadata()?.len(),
                rel.display()
            ));
        }
    }
    Ok(())
}
