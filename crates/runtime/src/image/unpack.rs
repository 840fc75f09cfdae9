//! Unpacks one layer (an uncompressed tar stream) into an empty directory, safely against hostile
//! archives, and converts OCI whiteouts into overlayfs ones.
//!
//! Every entry is resolved component by component with `openat(O_NOFOLLOW | O_DIRECTORY)` from a
//! descriptor of the layer root, so no symlink is ever followed while unpacking: an entry whose
//! parent path goes through a symlink (`a -> /etc` then `a/passwd`) is refused, as are `..`
//! components, absolute paths and hardlinks whose target escapes or is not in the layer. Symlinks
//! themselves may point anywhere (`/bin/sh -> /bin/busybox` is normal); they are only created.
//!
//! Whiteouts: `.wh.<name>` becomes a 0:0 character device (overlayfs' whiteout) and
//! `.wh..wh..opq` the xattr `trusted.overlay.opaque=y` on its directory; other `.wh..wh.` names
//! (AUFS bookkeeping) are skipped. Device nodes other than 0:0 character devices are skipped with a
//! warning: a container gets its devices from the runtime, never from an image. FIFOs are created.
//! Kept: mode (setuid included), numeric owner, mtime, `user.*` and `security.capability` xattrs
//! (not on symlinks). `trusted.*` xattrs from an archive are dropped: they could forge overlayfs
//! metadata.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::Timespec;
use rustix::fs::{AtFlags, Dev, FileType, Mode, OFlags, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::{Error, Result};

/// What one unpack produced.
#[derive(Debug, Clone, Copy, Default)]
pub struct UnpackStats {
    /// Bytes of regular file data written.
    pub bytes: u64,
    /// Entries in the archive, including skipped ones.
    pub entries: u64,
    /// Device nodes skipped.
    pub skipped_devices: u64,
}

/// Unpacks the tar stream `reader` into `dest` (an existing, empty directory). `layer` names the
/// layer in errors. On error the caller removes `dest`: a partial layer is never used.
pub fn unpack(reader: impl Read, dest: &Path, layer: &str) -> Result<UnpackStats> {
    let root = rustix::fs::open(
        dest,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io("opening", dest, e.into()))?;
    let mut u = Unpacker {
        root,
        layer: layer.to_string(),
        cached: None,
        dirs: Vec::new(),
        stats: UnpackStats::default(),
        buf: vec![0; 256 * 1024],
        is_root: rustix::process::geteuid().is_root(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| u.bad_tar("reading the archive", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| u.bad_tar("reading an entry header", e))?;
        u.stats.entries += 1;
        u.entry(entry)?;
    }
    u.finish_dirs()?;
    rustix::fs::syncfs(&u.root).map_err(|e| Error::io("syncing", dest, e.into()))?;
    Ok(u.stats)
}

struct Unpacker {
    root: OwnedFd,
    layer: String,
    /// The last parent directory opened: tar archives list a directory's entries together.
    cached: Option<(Vec<u8>, OwnedFd)>,
    /// Directories whose mtime is set at the end (their entries change it while unpacking).
    dirs: Vec<(Vec<Vec<u8>>, Timespec)>,
    stats: UnpackStats,
    buf: Vec<u8>,
    is_root: bool,
}

/// Metadata taken from a tar header and its PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

impl Unpacker {
    fn hostile(&self, entry: &[u8], reason: impl Into<String>) -> Error {
        Error::Hostile {
            layer: self.layer.clone(),
            entry: String::from_utf8_lossy(entry).into_owned(),
            reason: reason.into(),
        }
    }

    fn bad_tar(&self, what: &str, e: io::Error) -> Error {
        Error::Invalid {
            input: format!("layer {}", self.layer),
            reason: format!("{what}: {e}"),
        }
    }

    fn io(&self, what: &str, entry: &[u8], e: impl Into<io::Error>) -> Error {
        Error::Invalid {
            input: format!("layer {}", self.layer),
            reason: format!("{what} {:?}: {}", String::from_utf8_lossy(entry), e.into()),
        }
    }

    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let raw_path = entry.path_bytes().into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            return Ok(());
        }
        let comps = self.components(&raw_path)?;
        let meta = self.meta(&mut entry, &raw_path)?;
        let Some((name, parents)) = comps.split_last() else {
            // "./": the layer root itself.
            if kind.is_dir() {
                let root = self
                    .root
                    .try_clone()
                    .map_err(|e| self.io("opening", b"/", e))?;
                self.apply_meta(root.as_fd(), &meta, b"/", true)?;
                self.dirs.push((Vec::new(), meta.mtime));
                return Ok(());
            }
            return Err(self.hostile(&raw_path, "is the layer root but not a directory"));
        };
        let name = name.clone();

        if name.starts_with(WHITEOUT_PREFIX) {
            let parent = self.parent(parents, &raw_path, true)?;
            return self.whiteout(parent, &name, &raw_path);
        }

        match kind {
            tar::EntryType::Directory => {
                let parent = self.parent(parents, &raw_path, true)?;
                let dir = self.make_dir(parent, &name, &raw_path)?;
                self.apply_meta(dir.as_fd(), &meta, &raw_path, true)?;
                self.dirs.push((comps, meta.mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let parent = self.parent(parents, &raw_path, true)?;
                self.replace(parent.as_fd(), &name, &raw_path, false)?;
                let fd = rustix::fs::openat(
                    &parent,
                    os(&name),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| self.io("creating", &raw_path, e))?;
                let mut file = File::from(fd);
                let mut buf = std::mem::take(&mut self.buf);
                let copied = copy(&mut entry, &mut file, &mut buf);
                self.buf = buf;
                let n = copied.map_err(|e| self.io("writing", &raw_path, e))?;
                self.stats.bytes += n;
                self.apply_meta(file.as_fd(), &meta, &raw_path, false)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&raw_path, "is a symlink without a target"))?
                    .into_owned();
                if target.is_empty() {
                    return Err(self.hostile(&raw_path, "is a symlink with an empty target"));
                }
                let parent = self.parent(parents, &raw_path, true)?;
                self.replace(parent.as_fd(), &name, &raw_path, false)?;
                rustix::fs::symlinkat(os(&target), &parent, os(&name))
                    .map_err(|e| self.io("creating symlink", &raw_path, e))?;
                self.chown_nofollow(parent.as_fd(), &name, &meta, &raw_path)?;
                let times = Timestamps {
                    last_access: meta.mtime,
                    last_modification: meta.mtime,
                };
                rustix::fs::utimensat(&parent, os(&name), &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("setting times of", &raw_path, e))?;
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.hostile(&raw_path, "is a hardlink without a target"))?
                    .into_owned();
                let tcomps = self.components(&target).map_err(|_| {
                    self.hostile(&raw_path, "is a hardlink whose target leaves the layer")
                })?;
                let Some((tname, tparents)) = tcomps.split_last() else {
                    return Err(self.hostile(&raw_path, "is a hardlink to the layer root"));
                };
                let tparent = match self.walk(tparents, false) {
                    Ok(fd) => fd,
                    Err(Walk::Missing) => {
                        return Err(self
                            .hostile(&raw_path, "is a hardlink whose target is not in the layer"));
                    }
                    Err(Walk::Symlink) => {
                        return Err(self.hostile(
                            &raw_path,
                            "is a hardlink whose target path goes through a symlink",
                        ));
                    }
                    Err(Walk::NotDir) => {
                        return Err(self.hostile(
                            &raw_path,
                            "is a hardlink whose target path goes through a non-directory",
                        ));
                    }
                    Err(Walk::Io(e)) => return Err(self.io("resolving", &target, e)),
                };
                match rustix::fs::statat(&tparent, os(tname), AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                        return Err(self.hostile(&raw_path, "is a hardlink to a directory"));
                    }
                    Ok(_) => {}
                    Err(Errno::NOENT) => {
                        return Err(self
                            .hostile(&raw_path, "is a hardlink whose target is not in the layer"));
                    }
                    Err(e) => return Err(self.io("inspecting", &target, e)),
                }
                if tcomps == comps {
                    // A link to itself: the file is already there.
                    return Ok(());
                }
                let parent = self.parent(parents, &raw_path, true)?;
                self.replace(parent.as_fd(), &name, &raw_path, false)?;
                rustix::fs::linkat(&tparent, os(tname), &parent, os(&name), AtFlags::empty())
                    .map_err(|e| self.io("creating hardlink", &raw_path, e))?;
            }
            tar::EntryType::Fifo => {
                let parent = self.parent(parents, &raw_path, true)?;
                self.replace(parent.as_fd(), &name, &raw_path, false)?;
                rustix::fs::mknodat(
                    &parent,
                    os(&name),
                    FileType::Fifo,
                    Mode::from_raw_mode(meta.mode & 0o7777),
                    0,
                )
                .map_err(|e| self.io("creating fifo", &raw_path, e))?;
                self.chown_nofollow(parent.as_fd(), &name, &meta, &raw_path)?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(1);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(1);
                if kind == tar::EntryType::Char && major == 0 && minor == 0 {
                    // Already an overlayfs whiteout.
                    let parent = self.parent(parents, &raw_path, true)?;
                    self.replace(parent.as_fd(), &name, &raw_path, false)?;
                    self.make_whiteout(parent.as_fd(), &name, &raw_path)?;
                } else {
                    self.stats.skipped_devices += 1;
                    tracing::warn!(
                        layer = %self.layer,
                        entry = %String::from_utf8_lossy(&raw_path),
                        "skipping a device node in an image layer"
                    );
                }
            }
            other => {
                return Err(Error::Unsupported {
                    input: format!("layer {}", self.layer),
                    reason: format!(
                        "entry {:?} has tar type {:?}",
                        String::from_utf8_lossy(&raw_path),
                        other
                    ),
                });
            }
        }
        Ok(())
    }

    /// Splits an entry name into its components, refusing absolute paths and `..`.
    fn components(&self, raw: &[u8]) -> Result<Vec<Vec<u8>>> {
        if raw.first() == Some(&b'/') {
            return Err(self.hostile(raw, "has an absolute path"));
        }
        let mut out = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => return Err(self.hostile(raw, "has a '..' component")),
                c => out.push(c.to_vec()),
            }
        }
        Ok(out)
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>, raw: &[u8]) -> Result<Meta> {
        let h = entry.header();
        let mode = h.mode().map_err(|e| self.bad_tar("reading mode", e))?;
        let mut uid = h.uid().map_err(|e| self.bad_tar("reading uid", e))?;
        let mut gid = h.gid().map_err(|e| self.bad_tar("reading gid", e))?;
        let mut mtime = Timespec {
            tv_sec: h.mtime().map_err(|e| self.bad_tar("reading mtime", e))? as i64,
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                match key {
                    "uid" => uid = parse_u64(value).unwrap_or(uid),
                    "gid" => gid = parse_u64(value).unwrap_or(gid),
                    "mtime" => {
                        if let Some(t) = parse_pax_time(value) {
                            mtime = t;
                        }
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                            && (name.starts_with("user.") || name == "security.capability")
                        {
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let id = |v: u64| {
            u32::try_from(v)
                .ok()
                .filter(|v| *v != u32::MAX)
                .ok_or_else(|| self.hostile(raw, format!("has an invalid owner id {v}")))
        };
        Ok(Meta {
            mode,
            uid: id(uid)?,
            gid: id(gid)?,
            mtime,
            xattrs,
        })
    }

    /// Opens the directory `parents` (creating missing ones when `create`), never following a
    /// symlink; the result is cached for the next entry.
    fn parent(&mut self, parents: &[Vec<u8>], raw: &[u8], create: bool) -> Result<OwnedFd> {
        let key = parents.join(&b'/');
        if let Some((k, fd)) = &self.cached
            && *k == key
        {
            return fd.try_clone().map_err(|e| self.io("opening", raw, e));
        }
        let fd = match self.walk(parents, create) {
            Ok(fd) => fd,
            Err(Walk::Symlink) => {
                return Err(self.hostile(raw, "has a parent directory that is a symlink"));
            }
            Err(Walk::NotDir) => {
                return Err(self.hostile(raw, "has a parent that is not a directory"));
            }
            Err(Walk::Missing) => return Err(self.hostile(raw, "has a missing parent")),
            Err(Walk::Io(e)) => return Err(self.io("opening the parent of", raw, e)),
        };
        let clone = fd.try_clone().map_err(|e| self.io("opening", raw, e))?;
        self.cached = Some((key, clone));
        Ok(fd)
    }

    fn walk(&self, comps: &[Vec<u8>], create: bool) -> std::result::Result<OwnedFd, Walk> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut cur = self.root.try_clone().map_err(Walk::Io)?;
        for c in comps {
            let next = match rustix::fs::openat(&cur, os(c), flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, os(c), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(Walk::Io(e.into())),
                    }
                    rustix::fs::openat(&cur, os(c), flags, Mode::empty()).map_err(classify)?
                }
                Err(e) => return Err(classify(e)),
            };
            cur = next;
        }
        Ok(cur)
    }

    /// Makes room for a new entry `name` in `parent`: removes whatever is there, unless both are
    /// directories (`keep_dir`). Returns whether a directory was kept.
    fn replace(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        raw: &[u8],
        keep_dir: bool,
    ) -> Result<bool> {
        match rustix::fs::statat(parent, os(name), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(self.io("inspecting", raw, e)),
            Ok(st) => {
                let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                if is_dir && keep_dir {
                    return Ok(true);
                }
                // Anything cached below this name may be about to go away.
                self.cached = None;
                if is_dir {
                    let dir = rustix::fs::openat(
                        parent,
                        os(name),
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| self.io("opening", raw, e))?;
                    remove_contents(dir).map_err(|e| self.io("removing", raw, e))?;
                    rustix::fs::unlinkat(parent, os(name), AtFlags::REMOVEDIR)
                        .map_err(|e| self.io("removing", raw, e))?;
                } else {
                    rustix::fs::unlinkat(parent, os(name), AtFlags::empty())
                        .map_err(|e| self.io("removing", raw, e))?;
                }
                Ok(false)
            }
        }
    }

    fn make_dir(&mut self, parent: OwnedFd, name: &[u8], raw: &[u8]) -> Result<OwnedFd> {
        if !self.replace(parent.as_fd(), name, raw, true)? {
            rustix::fs::mkdirat(&parent, os(name), Mode::from_raw_mode(0o700))
                .map_err(|e| self.io("creating directory", raw, e))?;
        }
        rustix::fs::openat(
            &parent,
            os(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("opening", raw, e))
    }

    fn whiteout(&mut self, parent: OwnedFd, name: &[u8], raw: &[u8]) -> Result<()> {
        if name == OPAQUE {
            return rustix::fs::fsetxattr(
                &parent,
                "trusted.overlay.opaque",
                b"y",
                XattrFlags::empty(),
            )
            .map_err(|e| self.io("marking opaque the directory of", raw, e));
        }
        let target = &name[WHITEOUT_PREFIX.len()..];
        if target.starts_with(WHITEOUT_PREFIX) {
            // AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): meaningless to overlayfs.
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(self.hostile(raw, "is a whiteout without a name"));
        }
        self.replace(parent.as_fd(), target, raw, false)?;
        self.make_whiteout(parent.as_fd(), target, raw)
    }

    fn make_whiteout(&self, parent: BorrowedFd<'_>, name: &[u8], raw: &[u8]) -> Result<()> {
        rustix::fs::mknodat(
            parent,
            os(name),
            FileType::CharacterDevice,
            Mode::empty(),
            rustix::fs::makedev(0, 0) as Dev,
        )
        .map_err(|e| self.io("creating whiteout", raw, e))
    }

    fn apply_meta(&self, fd: BorrowedFd<'_>, meta: &Meta, raw: &[u8], is_dir: bool) -> Result<()> {
        match rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
        ) {
            Ok(()) => {}
            // Unprivileged unpacks (tests as a normal user) keep their own ids.
            Err(Errno::PERM) if !self.is_root => {}
            Err(e) => return Err(self.io("changing the owner of", raw, e)),
        }
        // After chown, which clears setuid bits.
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode & 0o7777))
            .map_err(|e| self.io("changing the mode of", raw, e))?;
        for (name, value) in &meta.xattrs {
            match rustix::fs::fsetxattr(fd, name.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::NOTSUP | Errno::PERM) => {
                    tracing::debug!(xattr = %name, entry = %String::from_utf8_lossy(raw), "xattr not kept");
                }
                Err(e) => return Err(self.io("setting an xattr on", raw, e)),
            }
        }
        if !is_dir {
            let times = Timestamps {
                last_access: meta.mtime,
                last_modification: meta.mtime,
            };
            rustix::fs::futimens(fd, &times).map_err(|e| self.io("setting times of", raw, e))?;
        }
        Ok(())
    }

    fn chown_nofollow(
        &self,
        parent: BorrowedFd<'_>,
        name: &[u8],
        meta: &Meta,
        raw: &[u8],
    ) -> Result<()> {
        match rustix::fs::chownat(
            parent,
            os(name),
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::PERM) if !self.is_root => Ok(()),
            Err(e) => Err(self.io("changing the owner of", raw, e)),
        }
    }

    /// Directory mtimes last, deepest first, since unpacking their entries changed them.
    fn finish_dirs(&mut self) -> Result<()> {
        self.cached = None;
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, mtime) in dirs.iter().rev() {
            // A directory replaced by a later entry is simply not there any more.
            let Ok(fd) = self.walk(comps, false) else {
                continue;
            };
            let times = Timestamps {
                last_access: *mtime,
                last_modification: *mtime,
            };
            rustix::fs::futimens(&fd, &times)
                .map_err(|e| self.io("setting times of", &comps.join(&b'/'), e))?;
        }
        Ok(())
    }
}

enum Walk {
    Missing,
    Symlink,
    NotDir,
    Io(io::Error),
}

fn classify(e: Errno) -> Walk {
    match e {
        Errno::NOENT => Walk::Missing,
        Errno::LOOP => Walk::Symlink,
        Errno::NOTDIR => Walk::NotDir,
        e => Walk::Io(e.into()),
    }
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn copy(r: &mut impl Read, w: &mut impl Write, buf: &mut [u8]) -> io::Result<u64> {
    let mut n = 0u64;
    loop {
        let k = match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// Empties the directory `dir` without following symlinks.
fn remove_contents(dir: OwnedFd) -> io::Result<()> {
    let mut names = Vec::new();
    for ent in rustix::fs::Dir::read_from(&dir)? {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push((name.to_vec(), ent.file_type() == FileType::Directory));
        }
    }
    for (name, is_dir) in names {
        if is_dir {
            let sub = rustix::fs::openat(
                &dir,
                os(&name),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            remove_contents(sub)?;
            rustix::fs::unlinkat(&dir, os(&name), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(&dir, os(&name), AtFlags::empty())?;
        }
    }
    Ok(())
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// A PAX time: seconds, optionally with a fraction (`1700000000.123456789`).
fn parse_pax_time(v: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    let tv_nsec = if digits.is_empty() {
        0
    } else {
        let n: i64 = digits.parse().ok()?;
        n * 10i64.pow(9 - digits.len() as u32)
    };
    // Fractions of times before 1970 are dropped rather than borrowed from the seconds.
    Some(Timespec {
        tv_sec,
        tv_nsec: if tv_sec < 0 { 0 } else { tv_nsec },
    })
}
