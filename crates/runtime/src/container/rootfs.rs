//! The container's root filesystem: an overlay of the image layers (read-only lowerdirs) with a
//! per-container upper and work directory, mounted by the shim at `<dir>/rootfs`.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

use super::files::Paths;

/// The kernel reads mount options from one page.
const MAX_OPTIONS: usize = 4000;

/// Mounts the overlay. Must run in a single-threaded process: with many layers the option
/// string is made shorter by changing into the layers' common parent directory for the mount
/// call (what containerd does in a forked child).
pub(crate) fn mount(paths: &Paths, layers: &[PathBuf]) -> io::Result<()> {
    if layers.is_empty() {
        return Err(io::Error::other("no image layers"));
    }
    for dir in [paths.rootfs(), paths.upper(), paths.work()] {
        fs::create_dir_all(&dir)?;
    }
    let absolute = options(layers, None, paths)?;
    if absolute.len() <= MAX_OPTIONS {
        return do_mount(&paths.rootfs(), &absolute);
    }
    let base = common_parent(layers)
        .ok_or_else(|| io::Error::other("too many image layers for one overlay mount"))?;
    let relative = options(layers, Some(&base), paths)?;
    if relative.len() > MAX_OPTIONS {
        return Err(io::Error::other(format!(
            "too many image layers for one overlay mount ({})",
            layers.len()
        )));
    }
    let back = std::env::current_dir()?;
    std::env::set_current_dir(&base)?;
    let result = do_mount(&paths.rootfs(), &relative);
    std::env::set_current_dir(back)?;
    result
}

fn do_mount(target: &Path, options: &str) -> io::Result<()> {
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options),
    )
    .map_err(|e| io::Error::other(format!("mounting overlay on {}: {e}", target.display())))
}

/// `lowerdir=<top>:…:<bottom>,upperdir=…,workdir=…`, lower paths relative to `base` if given.
fn options(layers: &[PathBuf], base: Option<&Path>, paths: &Paths) -> io::Result<String> {
    let mut lower = Vec::with_capacity(layers.len());
    for layer in layers.iter().rev() {
        if !layer.is_absolute() {
            return Err(io::Error::other(format!(
                "layer path {} is not absolute",
                layer.display()
            )));
        }
        let p = match base {
            Some(b) => layer.strip_prefix(b).map_err(io::Error::other)?,
            None => layer.as_path(),
        };
        lower.push(escape(p)?);
    }
    Ok(format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape(&paths.upper())?,
        escape(&paths.work())?
    ))
}

/// Overlay splits lowerdir on ':' (escaped as "\:"); the mount call splits options on ',',
/// which cannot be escaped.
fn escape(p: &Path) -> io::Result<String> {
    let s = p
        .to_str()
        .ok_or_else(|| io::Error::other(format!("path {} is not UTF-8", p.display())))?;
    if s.contains(',') || s.contains('\n') {
        return Err(io::Error::other(format!(
            "path {s:?} contains a character overlayfs options cannot carry"
        )));
    }
    Ok(s.replace('\\', "\\\\").replace(':', "\\:"))
}

fn common_parent(layers: &[PathBuf]) -> Option<PathBuf> {
    let first = layers.first()?.parent()?;
    let mut base = first.to_path_buf();
    while !layers.iter().all(|l| l.starts_with(&base)) {
        base = base.parent()?.to_path_buf();
    }
    Some(base)
}

/// Unmounts the rootfs if mounted (lazily when busy); idempotent.
pub(crate) fn unmount(paths: &Paths) -> io::Result<()> {
    let target = paths.rootfs();
    if !is_mount_point(&target)? {
        return Ok(());
    }
    match nix::mount::umount2(&target, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => nix::mount::umount2(&target, MntFlags::MNT_DETACH)
            .map_err(|e| io::Error::other(format!("unmounting {}: {e}", target.display()))),
        Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(io::Error::other(format!(
            "unmounting {}: {e}",
            target.display()
        ))),
    }
}

/// Whether `path` is listed as a mount point in this process's mount namespace.
pub(crate) fn is_mount_point(path: &Path) -> io::Result<bool> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_points(&mountinfo).any(|m| m == path))
}

pub(crate) fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo.lines().filter_map(|l| {
        let raw = l.split(' ').nth(4)?;
        Some(PathBuf::from(
            raw.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\"),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_put_the_top_layer_first_and_escape_colons() {
        let paths = Paths::new("/c/x");
        let layers = vec![PathBuf::from("/l/sha256:a"), PathBuf::from("/l/b")];
        assert_eq!(
            options(&layers, None, &paths).unwrap(),
            "lowerdir=/l/b:/l/sha256\\:a,upperdir=/c/x/upper,workdir=/c/x/work"
        );
        assert_eq!(
            options(&layers, Some(Path::new("/l")), &paths).unwrap(),
            "lowerdir=b:sha256\\:a,upperdir=/c/x/upper,workdir=/c/x/work"
        );
    }

    #[test]
    fn refuses_relative_layers_and_commas() {
        let paths = Paths::new("/c/x");
        assert!(options(&[PathBuf::from("l")], None, &paths).is_err());
        assert!(options(&[PathBuf::from("/l,upperdir=/")], None, &paths).is_err());
    }

    #[test]
    fn common_parent_of_layers() {
        let layers = vec![PathBuf::from("/a/b/c/1"), PathBuf::from("/a/b/d/2")];
        assert_eq!(common_parent(&layers), Some(PathBuf::from("/a/b")));
    }
}
