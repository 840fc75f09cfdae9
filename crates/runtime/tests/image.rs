//! Image store: import of docker-archive and OCI layouts, shared layers, whiteouts, hostile
//! archives, resolve, remove, garbage collection, drop-folder auto-import, concurrency.

mod image_support;

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;

use image_support::*;
use runtime::image::{DiskStats, DiskUsage, Error, ImageStore, Progress, StoreOptions};

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(&dir.join("agent")).unwrap()
}

fn base_layer() -> Vec<u8> {
    Layer::new()
        .dir("bin/")
        .file_mode("bin/tool", b"#!/bin/sh\necho hi\n", 0o4755, 0, 0)
        .symlink("bin/sh", "/bin/tool")
        .dir("etc/")
        .file("etc/passwd", b"root:x:0:0::/:/bin/sh\n")
        .file_mode("etc/owned", b"x", 0o600, 1234, 5678)
        .build()
}

fn layer_dirs(agent: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(agent.join("layers"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_type().unwrap().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn imports_the_busybox_test_image() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let tar = busybox_tar();
    let mut events = Vec::new();
    let t = std::time::Instant::now();
    let infos = s.import(&tar, &mut |p| events.push(p)).unwrap();
    let took = t.elapsed();
    assert_eq!(infos.len(), 1);
    assert_eq!(infos[0].names, vec!["docker.io/library/busybox:latest"]);
    eprintln!(
        "busybox import: {:?}, tarball {} bytes, unpacked {} bytes",
        took,
        std::fs::metadata(&tar).unwrap().len(),
        infos[0].size
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Progress::LayerDone { .. }))
    );
    assert!(events.iter().any(|e| matches!(e, Progress::Image(_))));

    let img = s.resolve("busybox").unwrap().expect("busybox resolves");
    assert_eq!(img.name, "docker.io/library/busybox:latest");
    assert_eq!(img.id, infos[0].id);
    assert_eq!(img.config.cmd, vec!["sh"]);
    assert_eq!(img.layers.len(), 1);
    let fs = &img.layers[0];
    assert!(fs.ends_with("fs"));
    let bb = std::fs::metadata(fs.join("bin/busybox")).unwrap();
    assert_eq!(bb.len(), std::fs::metadata("/bin/busybox").unwrap().len());
    assert_eq!(
        std::fs::read_link(fs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_link(fs.join("bin/httpd")).unwrap(),
        Path::new("busybox")
    );
    let passwd = std::fs::read_to_string(fs.join("etc/passwd")).unwrap();
    assert!(passwd.contains("root:x:0:0") && passwd.contains("nobody:x:65534"));
    assert!(
        std::fs::read_to_string(fs.join("var/www/index.html"))
            .unwrap()
            .contains("hello")
    );
    assert_eq!(
        std::fs::metadata(fs.join("tmp")).unwrap().mode() & 0o7777,
        0o1777
    );
}

#[test]
fn imports_oci_layouts_and_docker_archives_in_every_compression() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let top = Layer::new().file("app/data", b"v1").build();
    let mut n = 0;
    for comp in [Comp::Plain, Comp::Gzip, Comp::Zstd] {
        // Layer compression inside an OCI layout, the outer tarball plain.
        n += 1;
        let name = format!("reg.example:5000/oci/c{n}:v1");
        let img = Img::new(&name, vec![base_layer(), top.clone()]);
        let f = write(
            tmp.path(),
            &format!("oci-{n}.tar"),
            &oci_layout(&[img], comp),
        );
        let infos = s.import(&f, &mut |_| {}).unwrap();
        assert!(infos[0].names.contains(&name), "{:?}", infos[0].names);
        let r = s.resolve(&name).unwrap().unwrap();
        assert_eq!(r.layers.len(), 2);
        assert_eq!(std::fs::read(r.layers[1].join("app/data")).unwrap(), b"v1");
        assert_eq!(r.config.env, vec!["PATH=/bin", "A=b"]);
        assert_eq!(r.config.working_dir, "/w");
        assert_eq!(r.config.user, "65534");
        assert_eq!(r.config.exposed_ports, vec!["80/tcp"]);
        assert_eq!(r.config.stop_signal.as_deref(), Some("SIGQUIT"));
        assert!(r.config.entrypoint.is_empty());

        // The whole docker archive compressed.
        n += 1;
        let name = format!("docker{n}:latest");
        let img = Img::new(&name, vec![base_layer(), top.clone()]);
        let f = write(
            tmp.path(),
            &format!("docker-{n}.tar"),
            &compress(&docker_archive(&[img]), comp),
        );
        let infos = s.import(&f, &mut |_| {}).unwrap();
        let want = format!("docker.io/library/docker{n}:latest");
        assert!(infos[0].names.contains(&want), "{:?}", infos[0].names);
        assert!(s.resolve(&format!("docker{n}")).unwrap().is_some());
    }
    // Same layers everywhere: unpacked once each.
    assert_eq!(layer_dirs(s.dir()).len(), 2);
    // The six configs are byte for byte equal, so all six names point at one image.
    let list = s.list().unwrap();
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0].names.len(), 6);
    // Nothing left in the temp dir after decompressing whole tarballs.
    assert_eq!(
        std::fs::read_dir(s.dir().join("content/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn keeps_modes_owners_symlinks_and_hardlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let layer = Layer::new()
        .dir("bin/")
        .file_mode("bin/tool", b"x", 0o4755, 0, 0)
        .hardlink("bin/tool2", "bin/tool")
        .symlink("bin/abs", "/etc/shadow")
        .file_mode("etc/owned", b"x", 0o640, 1234, 5678)
        .device("dev/null", tar::EntryType::Char, 1, 3)
        .pax_file(
            &[
                (
                    "path",
                    format!("{}file", "a-long-pax-name/".repeat(9)).as_bytes(),
                ),
                ("SCHILY.xattr.user.skiff", b"kept"),
                ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
                ("mtime", b"1700000000.5"),
            ],
            "short",
            b"p",
        )
        .build();
    let f = write(
        tmp.path(),
        "a.tar",
        &docker_archive(&[Img::new("a", vec![layer])]),
    );
    s.import(&f, &mut |_| {}).unwrap();
    let fs = s.resolve("a").unwrap().unwrap().layers[0].clone();
    let tool = std::fs::metadata(fs.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.mtime(), 1_600_000_000);
    assert_eq!(
        tool.ino(),
        std::fs::metadata(fs.join("bin/tool2")).unwrap().ino()
    );
    assert_eq!(
        std::fs::read_link(fs.join("bin/abs")).unwrap(),
        Path::new("/etc/shadow")
    );
    let owned = std::fs::metadata(fs.join("etc/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    assert_eq!(owned.mode() & 0o777, 0o640);
    // Device nodes other than whiteouts are skipped.
    assert!(!fs.join("dev/null").exists());
    // PAX records: long path, user xattr kept, trusted.* dropped, fractional mtime.
    let long = fs.join(format!("{}file", "a-long-pax-name/".repeat(9)));
    assert_eq!(std::fs::read(&long).unwrap(), b"p");
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(&long, "user.skiff", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"kept");
    assert!(rustix::fs::getxattr(&long, "trusted.overlay.redirect", &mut buf).is_err());
    let m = std::fs::metadata(&long).unwrap();
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_700_000_000, 500_000_000));
}

#[test]
fn reimport_is_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let f = write(
        tmp.path(),
        "a.tar",
        &oci_layout(&[Img::new("a:1", vec![base_layer()])], Comp::Gzip),
    );
    s.import(&f, &mut |_| {}).unwrap();
    let index = s.dir().join("content/index.json");
    let before = std::fs::read(&index).unwrap();
    let ino = std::fs::metadata(&index).unwrap().ino();
    let layer = layer_dirs(s.dir());
    let marker = s.dir().join("layers").join(&layer[0]).join("complete");
    let marker_ino = std::fs::metadata(&marker).unwrap().ino();
    let mut events = Vec::new();
    s.import(&f, &mut |p| events.push(p)).unwrap();
    assert_eq!(std::fs::read(&index).unwrap(), before);
    assert_eq!(
        std::fs::metadata(&index).unwrap().ino(),
        ino,
        "index rewritten"
    );
    assert_eq!(
        std::fs::metadata(&marker).unwrap().ino(),
        marker_ino,
        "layer unpacked again"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Progress::LayerExists { .. }))
    );
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Progress::LayerDone { .. }))
    );
}

#[test]
fn converts_whiteouts_for_overlayfs() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let upper = Layer::new()
        .file("etc/.wh.passwd", b"")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/new", b"n")
        .file("x/.wh..wh.plnk", b"")
        .build();
    let f = write(
        tmp.path(),
        "w.tar",
        &oci_layout(&[Img::new("w", vec![base_layer(), upper])], Comp::Plain),
    );
    s.import(&f, &mut |_| {}).unwrap();
    let fs = s.resolve("w").unwrap().unwrap().layers[1].clone();
    let wh = std::fs::symlink_metadata(fs.join("etc/passwd")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert!(!fs.join("etc/.wh.passwd").exists());
    let mut buf = [0u8; 8];
    let n = rustix::fs::getxattr(fs.join("opaque"), "trusted.overlay.opaque", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"y");
    assert!(!fs.join("opaque/.wh..wh..opq").exists());
    assert!(fs.join("opaque/new").exists());
    assert!(!fs.join("x/.wh..wh.plnk").exists());
}

#[test]
fn overlay_mount_of_the_layers_shows_the_whiteouts() {
    // The real consumer: overlayfs with the layers as lowerdirs (top first).
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let upper = Layer::new()
        .file("etc/.wh.passwd", b"")
        .dir("bin/")
        .file("bin/.wh..wh..opq", b"")
        .file("bin/only", b"o")
        .build();
    let f = write(
        tmp.path(),
        "o.tar",
        &oci_layout(&[Img::new("o", vec![base_layer(), upper])], Comp::Gzip),
    );
    s.import(&f, &mut |_| {}).unwrap();
    let img = s.resolve("o").unwrap().unwrap();
    let lower: Vec<String> = img
        .layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    nix::mount::mount(
        Some("overlay"),
        &mnt,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(format!("lowerdir={}", lower.join(":")).as_str()),
    )
    .unwrap();
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(&mnt);
    assert!(!mnt.join("etc/passwd").exists());
    assert!(mnt.join("etc/owned").exists());
    assert!(
        !mnt.join("bin/tool").exists(),
        "opaque dir hides the lower bin/"
    );
    assert_eq!(std::fs::read(mnt.join("bin/only")).unwrap(), b"o");
    // A mounted layer is kept even when no image references it any more.
    s.remove("o").unwrap();
    assert_eq!(layer_dirs(s.dir()).len(), 2);
    drop(_guard);
    s.gc(&HashSet::new(), 100, 100).unwrap();
    assert_eq!(layer_dirs(s.dir()).len(), 0);
}

#[test]
fn refuses_hostile_layers_and_leaves_nothing() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            Layer::new().file("../../../../victim/pwned", b"x").build(),
        ),
        (
            "dotdot inside",
            Layer::new().file("a/../../victim/pwned", b"x").build(),
        ),
        ("absolute", Layer::new().file("/victim/pwned", b"x").build()),
        (
            "dotdot in a PAX path",
            Layer::new()
                .pax_file(&[("path", b"a/../../../../victim/pwned")], "harmless", b"x")
                .build(),
        ),
        (
            "through relative symlink",
            Layer::new()
                .symlink("a", "../../../../../../../../victim")
                .file("a/pwned", b"x")
                .build(),
        ),
        (
            "through absolute symlink",
            Layer::new()
                .symlink("a", "VICTIM")
                .file("a/pwned", b"x")
                .build(),
        ),
        (
            "through nested symlink",
            Layer::new()
                .dir("d/")
                .symlink("d/a", "VICTIM")
                .dir("d/a/sub/")
                .build(),
        ),
        (
            "symlink then hardlink through it",
            Layer::new()
                .symlink("a", "VICTIM")
                .hardlink("b", "a/secret")
                .build(),
        ),
        (
            "hardlink escaping",
            Layer::new().hardlink("b", "../../../etc/passwd").build(),
        ),
        (
            "hardlink absolute",
            Layer::new().hardlink("b", "/etc/passwd").build(),
        ),
        (
            "hardlink missing",
            Layer::new().hardlink("b", "nothere").build(),
        ),
        (
            "whiteout through symlink",
            Layer::new()
                .symlink("a", "VICTIM")
                .file("a/.wh.keep", b"")
                .build(),
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"k").unwrap();
    std::fs::write(victim.join("secret"), b"s").unwrap();
    let s = store(&tmp.path().join("a/b/c"));
    let before = tree(tmp.path());
    for (what, layer) in cases {
        // Symlink targets name the victim directory absolutely. (The rewrite drops PAX
        // headers, so layers without the placeholder are left as they are.)
        let layer = if layer.windows(6).any(|w| w == b"VICTIM") {
            replace_victim(layer, &victim)
        } else {
            layer
        };
        for archive in [
            oci_layout(
                &[Img::new("evil", vec![base_layer(), layer.clone()])],
                Comp::Gzip,
            ),
            docker_archive(&[Img::new("evil", vec![layer.clone()])]),
        ] {
            let f = tmp.path().join("evil.tar");
            std::fs::write(&f, &archive).unwrap();
            let err = s.import(&f, &mut |_| {}).unwrap_err();
            std::fs::remove_file(&f).unwrap();
            assert!(matches!(err, Error::Hostile { .. }), "{what}: {err}");
            assert!(
                err.to_string().starts_with("refusing layer"),
                "{what}: {err}"
            );
            assert!(s.resolve("evil").unwrap().is_none(), "{what}");
            assert!(s.list().unwrap().is_empty(), "{what}");
            assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 2, "{what}");
            assert_eq!(std::fs::read(victim.join("keep")).unwrap(), b"k", "{what}");
            // Only the base layer (complete) may remain.
            for l in layer_dirs(s.dir()) {
                assert!(
                    s.dir().join("layers").join(l).join("complete").exists(),
                    "{what}"
                );
            }
        }
    }
    let after: Vec<String> = tree(tmp.path())
        .into_iter()
        .filter(|p| !p.starts_with("a/b/c/agent"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|p| !p.starts_with("a/b/c/agent"))
        .collect();
    assert_eq!(before, after);
}

/// Rewrites the placeholder VICTIM (as a whole link name) in a layer.
fn replace_victim(layer: Vec<u8>, victim: &Path) -> Vec<u8> {
    let mut out = tar::Builder::new(Vec::new());
    let mut a = tar::Archive::new(layer.as_slice());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let mut h = e.header().clone();
        if e.link_name_bytes().as_deref() == Some(b"VICTIM".as_slice()) {
            let v = victim.display().to_string();
            let g = h.as_gnu_mut().unwrap();
            g.linkname = [0; 100];
            g.linkname[..v.len()].copy_from_slice(v.as_bytes());
            h.set_cksum();
        }
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        out.append(&h, data.as_slice()).unwrap();
    }
    out.into_inner().unwrap()
}

#[test]
fn refuses_digest_mismatches_and_bad_archives() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    // A layer blob whose content does not match its digest.
    let img = Img::new("m", vec![base_layer()]);
    let good = oci_layout(&[img], Comp::Plain);
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut a = tar::Archive::new(good.as_slice());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        files.push((name, data));
    }
    let layer_digest = sha256_hex(&base_layer());
    for (name, data) in &mut files {
        if name.ends_with(&layer_digest) {
            // Same length, one entry renamed: still a valid tar, different bytes.
            let pos = data.windows(8).position(|w| w == b"etc/owne").unwrap();
            data[pos] = b'E';
            let mut h =
                tar::Header::from_byte_slice(&data[(pos / 512) * 512..(pos / 512) * 512 + 512])
                    .clone();
            h.set_cksum();
            let start = (pos / 512) * 512;
            data[start..start + 512].copy_from_slice(h.as_bytes());
        }
    }
    let f = write(tmp.path(), "bad.tar", &tar_of(&files));
    let err = s.import(&f, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    assert!(s.list().unwrap().is_empty());
    assert!(layer_dirs(s.dir()).is_empty());

    let f = write(
        tmp.path(),
        "junk.tar",
        b"this is not a tarball at all, not even close........",
    );
    let err = s.import(&f, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, Error::Invalid { .. } | Error::Unsupported { .. }),
        "{err}"
    );
    let f = write(
        tmp.path(),
        "empty.tar",
        &tar_of(&[("readme".into(), b"hi".to_vec())]),
    );
    let err = s.import(&f, &mut |_| {}).unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let f = write(
        tmp.path(),
        "x.tar.xz",
        &[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2],
    );
    let err = s.import(&f, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("xz"), "{err}");
    let err = s
        .import(&tmp.path().join("missing.tar"), &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("missing.tar"), "{err}");
}

#[test]
fn resolves_normalized_names_ids_and_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let imgs = [
        Img::new("docker.io/library/busybox:latest", vec![base_layer()]),
        Img {
            name: Some("reg:5000/team/app:v2".into()),
            layers: vec![base_layer()],
            cmd: vec!["app".into()],
        },
        // A name that looks like an id prefix: names win, as in docker.
        Img {
            name: Some("abcd".into()),
            layers: vec![base_layer()],
            cmd: vec!["abcd".into()],
        },
    ];
    let f = write(tmp.path(), "r.tar", &oci_layout(&imgs, Comp::Gzip));
    let infos = s.import(&f, &mut |_| {}).unwrap();
    let bb = infos[0].id.clone();
    let app = infos[1].id.clone();
    let app_digest = infos[1].repo_digests[0]
        .split('@')
        .nth(1)
        .unwrap()
        .to_string();
    assert_eq!(
        infos[1].repo_digests[0],
        format!("reg:5000/team/app@{app_digest}")
    );
    let table: Vec<(String, Option<(&str, String)>)> = vec![
        (
            "busybox".into(),
            Some((bb.as_str(), "docker.io/library/busybox:latest".into())),
        ),
        (
            "busybox:latest".into(),
            Some((bb.as_str(), "docker.io/library/busybox:latest".into())),
        ),
        (
            "library/busybox".into(),
            Some((bb.as_str(), "docker.io/library/busybox:latest".into())),
        ),
        (
            "docker.io/library/busybox".into(),
            Some((bb.as_str(), "docker.io/library/busybox:latest".into())),
        ),
        ("busybox:1.36".into(), None),
        (
            "reg:5000/team/app:v2".into(),
            Some((app.as_str(), "reg:5000/team/app:v2".into())),
        ),
        ("reg:5000/team/app".into(), None),
        (
            format!("reg:5000/team/app@{app_digest}"),
            Some((app.as_str(), format!("reg:5000/team/app@{app_digest}"))),
        ),
        (app.clone(), Some((app.as_str(), app.clone()))),
        (
            app.trim_start_matches("sha256:").to_string(),
            Some((app.as_str(), app.clone())),
        ),
        (
            app["sha256:".len().."sha256:".len() + 12].to_string(),
            Some((app.as_str(), app.clone())),
        ),
        (format!("sha256:{}", "0".repeat(64)), None),
    ];
    for (key, want) in table {
        let got = s.resolve(&key).unwrap().map(|r| (r.id, r.name));
        let want = want.map(|(id, name)| (id.to_string(), name));
        assert_eq!(got, want, "{key}");
    }
    let r = s.resolve("reg:5000/team/app:v2").unwrap().unwrap();
    assert_eq!(r.config.cmd, vec!["app"]);
    let i = s.inspect("reg:5000/team/app:v2").unwrap().unwrap();
    assert_eq!(i.id, app);
    assert_eq!(
        i.repo_digests,
        vec![format!("reg:5000/team/app@{app_digest}")]
    );
    assert!(s.inspect("reg:5000/team/app:v3").unwrap().is_none());
    let r = s.resolve("abcd").unwrap().unwrap();
    assert_eq!(
        (r.config.cmd, r.name),
        (
            vec!["abcd".to_string()],
            "docker.io/library/abcd:latest".to_string()
        )
    );
    for bad in ["Busybox", "a:b:c", ""] {
        assert!(
            matches!(s.resolve(bad), Err(Error::InvalidReference { .. })),
            "{bad}"
        );
    }
}

#[test]
fn remove_untags_then_removes_and_prunes_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let img = Img::new("one:1", vec![base_layer()]);
    let id = img.id();
    let f = write(
        tmp.path(),
        "a.tar",
        &docker_archive(&[img, Img::new("two:2", vec![base_layer()])]),
    );
    let infos = s.import(&f, &mut |_| {}).unwrap();
    assert_eq!(infos.len(), 2);
    assert_eq!(s.list().unwrap().len(), 1, "one config, two names");
    s.remove("one:1").unwrap();
    let l = s.list().unwrap();
    assert_eq!(l[0].names, vec!["docker.io/library/two:2"]);
    assert_eq!(layer_dirs(s.dir()).len(), 1);
    assert!(matches!(s.remove("one:1"), Err(Error::NotFound(_))));
    s.remove(&id[7..19]).unwrap();
    assert!(s.list().unwrap().is_empty());
    assert!(layer_dirs(s.dir()).is_empty());
    assert_eq!(
        std::fs::read_dir(s.dir().join("content/blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    assert!(matches!(s.remove("nothing"), Err(Error::NotFound(_))));
}

struct FakeDisk {
    capacity: u64,
    used: std::sync::Mutex<u64>,
}

impl DiskUsage for FakeDisk {
    fn stats(&self, _: &Path) -> std::io::Result<DiskStats> {
        let used = *self.used.lock().unwrap();
        Ok(DiskStats {
            capacity: self.capacity,
            available: self.capacity - used,
        })
    }
}

#[test]
fn gc_frees_unpinned_unused_images_by_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Arc::new(FakeDisk {
        capacity: 1000,
        used: std::sync::Mutex::new(0),
    });
    let s = ImageStore::open_with(
        &tmp.path().join("agent"),
        StoreOptions {
            disk: disk.clone(),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    // Four images with one layer each of 10 bytes of data, imported in order a, b, c, d.
    let mut ids = Vec::new();
    for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
        let layer = Layer::new()
            .file("f", format!("{n}{}", "x".repeat(9)).as_bytes())
            .build();
        let f = write(
            tmp.path(),
            &format!("{n}.tar"),
            &docker_archive(&[Img::new(n, vec![layer])]),
        );
        ids.push(s.import(&f, &mut |_| {}).unwrap()[0].id.clone());
        if i == 0 {
            // Created times are in seconds; keep the order unambiguous.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
    }
    // Below the high threshold: nothing removed.
    *disk.used.lock().unwrap() = 840;
    let r = s.gc(&HashSet::new(), 85, 80).unwrap();
    assert!(r.removed_images.is_empty());
    assert_eq!(s.list().unwrap().len(), 4);
    // At 86 % with a in use: must free 60 bytes to reach 80 %, but the candidates b, c, d
    // only hold 10 bytes each: all three go, a stays.
    *disk.used.lock().unwrap() = 860;
    let in_use: HashSet<String> = [ids[0].clone()].into();
    let r = s.gc(&in_use, 85, 80).unwrap();
    assert_eq!(r.usage_pct, 86.0);
    let mut removed = r.removed_images.clone();
    removed.sort();
    let mut want = ids[1..].to_vec();
    want.sort();
    assert_eq!(removed, want);
    assert_eq!(r.removed_layers, 3);
    assert_eq!(r.freed_bytes, 30);
    assert_eq!(s.list().unwrap().len(), 1);
    // Only as much as needed: with 15 bytes to free, the oldest two of three go.
    for n in ["e", "f", "g"] {
        let layer = Layer::new()
            .file("f", format!("{n}{}", "x".repeat(9)).as_bytes())
            .build();
        let f = write(
            tmp.path(),
            &format!("{n}.tar"),
            &docker_archive(&[Img::new(n, vec![layer])]),
        );
        s.import(&f, &mut |_| {}).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    *disk.used.lock().unwrap() = 815;
    let r = s.gc(&in_use, 80, 80).unwrap();
    assert_eq!(r.removed_images.len(), 2, "{r:?}");
    let names: Vec<String> = s
        .list()
        .unwrap()
        .into_iter()
        .flat_map(|i| i.names)
        .collect();
    assert!(
        names.contains(&"docker.io/library/g:latest".to_string()),
        "{names:?}"
    );
}

#[test]
fn auto_import_pins_once_per_content() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = Arc::new(FakeDisk {
        capacity: 100,
        used: std::sync::Mutex::new(99),
    });
    let agent = tmp.path().join("agent");
    let s = ImageStore::open_with(
        &agent,
        StoreOptions {
            disk,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    std::fs::copy(busybox_tar(), agent.join("images/busybox.tar")).unwrap();
    write(&agent.join("images"), "broken.tar", b"not an image");
    write(&agent.join("images"), ".partial.tar", b"ignored");
    let got = s.auto_import().unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].pinned);
    assert!(
        s.auto_import().unwrap().is_empty(),
        "second scan imports nothing"
    );
    // The same content under another name is not imported again either.
    std::fs::copy(busybox_tar(), agent.join("images/copy.tar")).unwrap();
    assert!(s.auto_import().unwrap().is_empty());
    // Pinned images survive gc even at 99 % disk use.
    let r = s.gc(&HashSet::new(), 85, 80).unwrap();
    assert!(r.removed_images.is_empty());
    assert_eq!(s.list().unwrap().len(), 1);
    // An explicit remove takes it away, and the drop folder does not bring it back.
    s.remove("busybox").unwrap();
    assert!(s.auto_import().unwrap().is_empty());
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn a_long_lived_store_sees_imports_by_another() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = store(tmp.path());
    assert!(agent.resolve("busybox").unwrap().is_none());
    let cli = store(tmp.path());
    cli.import(&busybox_tar(), &mut |_| {}).unwrap();
    assert!(agent.resolve("busybox").unwrap().is_some());
    cli.remove("busybox").unwrap();
    assert!(agent.resolve("busybox").unwrap().is_none());
}

#[test]
fn concurrent_imports_share_layers_and_lose_no_image() {
    let tmp = tempfile::tempdir().unwrap();
    let agent = tmp.path().join("agent");
    ImageStore::open(&agent).unwrap();
    let big = {
        let mut l = Layer::new();
        for i in 0..200 {
            l = l.file(&format!("d/{i}"), &vec![i as u8; 20_000]);
        }
        l.build()
    };
    let files: Vec<_> = (0..4)
        .map(|i| {
            let top = Layer::new().file("id", format!("{i}").as_bytes()).build();
            write(
                tmp.path(),
                &format!("{i}.tar"),
                &oci_layout(
                    &[Img::new(&format!("img{i}"), vec![big.clone(), top])],
                    Comp::Gzip,
                ),
            )
        })
        .collect();
    let handles: Vec<_> = files
        .into_iter()
        .map(|f| {
            let agent = agent.clone();
            // Each thread opens its own store, as separate processes would.
            std::thread::spawn(move || ImageStore::open(&agent).unwrap().import(&f, &mut |_| {}))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
    let s = ImageStore::open(&agent).unwrap();
    assert_eq!(s.list().unwrap().len(), 4);
    assert_eq!(
        layer_dirs(&agent).len(),
        5,
        "one shared base layer and four tops"
    );
    for i in 0..4 {
        let r = s.resolve(&format!("img{i}")).unwrap().unwrap();
        assert_eq!(
            std::fs::read(r.layers[1].join("id")).unwrap(),
            format!("{i}").as_bytes()
        );
        assert_eq!(
            std::fs::read_dir(r.layers[0].join("d")).unwrap().count(),
            200
        );
    }
}

#[test]
fn a_half_unpacked_layer_is_redone() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path());
    let layer = base_layer();
    let hex = sha256_hex(&layer);
    // What a crash mid-unpack leaves: the directory without its marker.
    let dir = s.dir().join("layers").join(&hex);
    std::fs::create_dir_all(dir.join("fs/etc")).unwrap();
    std::fs::write(dir.join("fs/etc/garbage"), b"half").unwrap();
    let f = write(
        tmp.path(),
        "a.tar",
        &docker_archive(&[Img::new("a", vec![layer])]),
    );
    s.import(&f, &mut |_| {}).unwrap();
    assert!(dir.join("complete").exists());
    assert!(!dir.join("fs/etc/garbage").exists());
    assert!(dir.join("fs/etc/passwd").exists());
}
