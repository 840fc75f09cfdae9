//! `skiff image`: import, list, remove and pull the node agent's OCI images, in
//! `<data-dir>/agent`, whether or not an agent is running on that directory (the image store
//! locks what it shares).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use runtime::image::{ImageInfo, ImageStore, Progress, RegistryAuth, reference};

#[derive(Parser, Clone)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Parser, Clone)]
struct DataDir {
    /// The data directory of the server or agent (images live in <data-dir>/agent).
    #[arg(long, env = "SKIFF_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand, Clone)]
enum ImageCommand {
    /// Import docker-archive or OCI-layout tarballs (plain, gzip or zstd).
    Import {
        #[command(flatten)]
        dir: DataDir,
        /// Image tarballs to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        dir: DataDir,
    },
    /// Remove images by name or id (a name shared with other names is only untagged).
    #[command(alias = "rmi")]
    Rm {
        #[command(flatten)]
        dir: DataDir,
        #[arg(required = true, value_name = "NAME|ID")]
        images: Vec<String>,
    },
    /// Pull an image from an OCI registry (loopback registries over plain HTTP).
    Pull {
        #[command(flatten)]
        dir: DataDir,
        /// Registry credentials as USER:PASSWORD.
        #[arg(long, env = "SKIFF_REGISTRY_CREDS", hide_env_values = true)]
        creds: Option<String>,
        reference: String,
    },
}

pub fn run(args: ImageArgs) -> Result<()> {
    match args.command {
        ImageCommand::Import { dir, files } => {
            let store = open(&dir)?;
            for f in files {
                import(&store, &f)?;
            }
            Ok(())
        }
        ImageCommand::Ls { dir } => {
            let store = open(&dir)?;
            print!("{}", table(&store.list()?));
            Ok(())
        }
        ImageCommand::Rm { dir, images } => {
            let store = open(&dir)?;
            for i in images {
                store.remove(&i)?;
                println!("Deleted: {i}");
            }
            Ok(())
        }
        ImageCommand::Pull {
            dir,
            creds,
            reference,
        } => {
            let store = open(&dir)?;
            let auth = match creds {
                Some(c) => {
                    let Some((u, p)) = c.split_once(':') else {
                        bail!("--creds must be USER:PASSWORD");
                    };
                    Some(RegistryAuth {
                        username: u.to_string(),
                        password: p.to_string(),
                    })
                }
                None => None,
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            let mut bar = Bar::new();
            let img = rt.block_on(store.pull(&reference, auth.as_ref(), &mut |p| bar.show(p)))?;
            bar.finish();
            println!("Image is up to date for {}: {}", img.name, img.id);
            Ok(())
        }
    }
}

fn open(dir: &DataDir) -> Result<ImageStore> {
    let agent = dir
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir)
        .join("agent");
    Ok(ImageStore::open(&agent)?)
}

pub(crate) fn import(store: &ImageStore, file: &std::path::Path) -> Result<()> {
    let start = std::time::Instant::now();
    let mut bar = Bar::new();
    let infos = store
        .import(file, &mut |p| bar.show(p))
        .with_context(|| format!("importing {}", file.display()))?;
    bar.finish();
    for i in infos {
        let name = i.names.first().cloned().unwrap_or_else(|| "<none>".into());
        println!(
            "imported {name} ({}, {}) in {:.2}s",
            short_id(&i.id),
            human_size(i.size),
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// A progress bar on a terminal, plain lines otherwise (both on stderr).
struct Bar {
    bar: Option<indicatif::ProgressBar>,
}

impl Bar {
    fn new() -> Bar {
        Bar {
            bar: std::io::stderr().is_terminal().then(|| {
                let b = indicatif::ProgressBar::new(0);
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{spinner} {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b
            }),
        }
    }

    fn show(&mut self, p: Progress) {
        match (&self.bar, p) {
            (Some(b), Progress::Decompress { done, total }) => {
                b.set_message("decompressing");
                b.set_length(total);
                b.set_position(done);
            }
            (Some(b), Progress::Start { total }) => {
                b.set_message("unpacking");
                b.set_length(total);
                b.set_position(0);
            }
            (Some(b), Progress::Advance { done, .. }) => b.set_position(done),
            (Some(b), Progress::LayerDone { layer, .. }) => {
                b.set_message(format!("unpacked {}", short_id(&layer)))
            }
            (Some(_), _) => {}
            (None, Progress::LayerDone { layer, size }) => {
                eprintln!("unpacked layer {} ({})", short_id(&layer), human_size(size))
            }
            (None, Progress::LayerExists { layer }) => {
                eprintln!("layer {} already present", short_id(&layer))
            }
            (None, _) => {}
        }
    }

    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

fn short_id(id: &str) -> &str {
    let hex = id.strip_prefix("sha256:").unwrap_or(id);
    &hex[..hex.len().min(12)]
}

/// Like crictl's sizes (go-units HumanSize): decimal units, four significant digits.
fn human_size(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < units.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    let digits = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    format!("{s}{}", units[u])
}

/// `crictl images`' table: one row per name, `<none>` for untagged images.
fn table(images: &[ImageInfo]) -> String {
    let mut rows = vec![[
        "IMAGE".to_string(),
        "TAG".to_string(),
        "IMAGE ID".to_string(),
        "SIZE".to_string(),
    ]];
    let mut sorted: Vec<&ImageInfo> = images.iter().collect();
    sorted.sort_by(|a, b| a.names.cmp(&b.names).then(a.id.cmp(&b.id)));
    for i in sorted {
        let id = short_id(&i.id).to_string();
        let size = human_size(i.size);
        if i.names.is_empty() {
            rows.push(["<none>".into(), "<none>".into(), id, size]);
            continue;
        }
        for n in &i.names {
            let (repo, tag) = reference::split_tag(n);
            rows.push([repo.to_string(), tag.to_string(), id.clone(), size.clone()]);
        }
    }
    let mut widths = [0usize; 4];
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let line = format!(
            "{:<w0$}   {:<w1$}   {:<w2$}   {}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_crictl() {
        for (n, want) in [
            (0, "0B"),
            (999, "999B"),
            (1000, "1kB"),
            (2_031_616, "2.032MB"),
            (55_400_000, "55.4MB"),
            (123_456_789, "123.5MB"),
        ] {
            assert_eq!(human_size(n), want, "{n}");
        }
    }

    #[test]
    fn table_has_one_row_per_name() {
        let img = |id: &str, names: &[&str]| ImageInfo {
            id: format!("sha256:{id}"),
            names: names.iter().map(|s| s.to_string()).collect(),
            repo_digests: vec![],
            size: 2_000_000,
            pinned: false,
            created: 0,
        };
        let t = table(&[
            img(&"b".repeat(64), &[]),
            img(
                &"a".repeat(64),
                &["docker.io/library/busybox:latest", "reg:5000/x:v1"],
            ),
        ]);
        let want = "\
IMAGE                       TAG      IMAGE ID       SIZE
<none>                      <none>   bbbbbbbbbbbb   2MB
docker.io/library/busybox   latest   aaaaaaaaaaaa   2MB
reg:5000/x                  v1       aaaaaaaaaaaa   2MB
";
        assert_eq!(t, want);
    }
}
