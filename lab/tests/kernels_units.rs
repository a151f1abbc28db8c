//! Unit tests of the kernel catalogue that need no network: manifest
//! parsing and its errors, apt sources parsing, `.modinfo`, bzImage payloads.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;

use tclab_lab::kernels::{self, Catalog, KernelError, Manifest, Source, apt, bzimage, modinfo, modules};

const SHA: &str = "fb4a1229952d892138532c1d9f40a7fd0bd408e4dcf969c12e4524b6a89fdcb8";

fn parse(text: &str) -> Result<Manifest, KernelError> {
    Manifest::parse(text, Path::new("/repo/kernels/k.toml"))
}

fn err(text: &str) -> String {
    parse(text).expect_err("must be rejected").to_string()
}

#[test]
fn manifest_debian_and_local_sources_parse() {
    let m = parse(&format!(
        "name = \"6.1\"\nnotes = \"n\"\n[source]\ndebian = {{ package = \"p\", version = \"1.2-3\", suite = \"bookworm\" }}\nsha256 = \"{SHA}\"\n"
    ))
    .expect("debian");
    assert_eq!(m.version(), "1.2-3");
    assert_eq!(m.cache_key(), "6.1-1.2-3");
    assert_eq!(m.modules, kernels::LAB_MODULES);
    let m = parse("name = \"6.6\"\nmodules = [\"veth\"]\n[source]\nlocal = { image = \"b/bzImage\", modules = \"mods\", version = \"6.6.30\" }\n")
        .expect("image");
    assert_eq!(
        m.source,
        Source::LocalImage { image: "/repo/kernels/b/bzImage".into(), modules: Some("/repo/kernels/mods".into()), version: "6.6.30".into() }
    );
    assert_eq!(m.modules, ["veth"]);
}

#[test]
fn manifest_errors_name_the_file_and_the_problem() {
    let cases = [
        ("name = \"x\"\n[source]\ndebian = { package = \"p\", version = \"1\", suite = \"s\" }\n", "needs `sha256`"),
        ("name = \"x\"\n[source]\nsha256 = \"abc\"\n", "needs `debian = {..}` or `local = {..}`"),
        (
            "name = \"x\"\n[source]\nlocal = { deb = \"a.deb\", version = \"1\" }\ndebian = { package = \"p\", version = \"1\", suite = \"s\" }\n",
            "both `debian` and `local`",
        ),
        ("name = \"x\"\n[source]\nlocal = { deb = \"a.deb\", version = \"1\" }\nsha256 = \"ABC\"\n", "not 64 lowercase hex"),
        ("name = \"../x\"\n[source]\nlocal = { deb = \"a.deb\", version = \"1\" }\n", "name:"),
        ("name = \"x\"\n[source]\nlocal = { deb = \"a.deb\", version = \"1/2\" }\n", "version:"),
        ("name = \"x\"\nsuite = \"oops\"\n", "unknown field `suite`"),
        ("name = \"x\"\n[source]\nlocal = { deb = \"a\", modules = \"m\", version = \"1\" }\n", "goes with `local.image`"),
    ];
    for (text, want) in cases {
        let msg = err(text);
        assert!(msg.contains("/repo/kernels/k.toml") && msg.contains(want), "{want:?} not in {msg}");
    }
    assert!(err("name = \"x\"\nsuite = \"oops\"\n").contains("line 2"), "toml position kept");
}

#[test]
fn catalog_duplicate_and_unknown_names() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let text = "name = \"dup\"\n[source]\nlocal = { deb = \"a.deb\", version = \"1\" }\n";
    std::fs::write(tmp.path().join("a.toml"), text).expect("a");
    std::fs::write(tmp.path().join("README.md"), "not a manifest").expect("readme");
    let cat = Catalog::load(tmp.path()).expect("one manifest");
    let msg = cat.get("nope").expect_err("unknown").to_string();
    assert!(msg.contains("\"nope\"") && msg.contains("known: dup"), "{msg}");
    std::fs::write(tmp.path().join("b.toml"), text).expect("b");
    let msg = Catalog::load(tmp.path()).expect_err("duplicate").to_string();
    assert!(msg.contains("also declared by"), "{msg}");
}

#[test]
fn shipped_manifests_pin_the_facts() {
    let cat = Catalog::load(&kernels::default_manifest_dir()).expect("repo manifests");
    let pins: Vec<(String, String, String)> = cat
        .manifests
        .values()
        .map(|m| match &m.source {
            Source::Debian(d) => (m.name.clone(), d.package.clone(), d.suite.clone()),
            other => panic!("{}: shipped manifests are Debian downloads, got {other}", m.name),
        })
        .collect();
    assert_eq!(pins.len(), 3);
    assert_eq!(pins[0], ("5.10".into(), "linux-image-5.10.0-32-cloud-amd64".into(), "bullseye".into()));
    assert!(pins[1].1.ends_with("-unsigned") && pins[1].2 == "bookworm-security", "{:?}", pins[1]);
    assert!(pins[2].1.starts_with("linux-image-6.12.") && pins[2].2 == "bookworm-security", "{:?}", pins[2]);
}

#[test]
fn modinfo_section_fields_and_module_names() {
    let raw = b"license=GPL\0depends=nf_defrag_ipv6,libcrc32c,nf-defrag-ipv4\0name=nf_conntrack\0vermagic=6.1.0-56-cloud-amd64 SMP mod_unload\0";
    let info = modinfo::parse_modinfo_section(raw);
    assert_eq!(info.depends, ["nf_defrag_ipv6", "libcrc32c", "nf_defrag_ipv4"]);
    assert_eq!(info.name.as_deref(), Some("nf_conntrack"));
    assert!(info.vermagic.as_deref().is_some_and(|v| v.starts_with("6.1.0-56")));
    assert!(modinfo::parse_modinfo_section(b"depends=\0").depends.is_empty());
    assert_eq!(modinfo::module_name_of_file("sch-ingress.ko.xz").as_deref(), Some("sch_ingress"));
    assert_eq!(modinfo::module_name_of_file("veth.ko").as_deref(), Some("veth"));
    assert_eq!(modinfo::module_name_of_file("modules.dep"), None);
    let builtin = modules::parse_builtin("kernel/net/sched/sch_ingress.ko\nkernel/lib/crc32.ko\n");
    assert_eq!(builtin, BTreeSet::from(["sch_ingress".to_owned(), "crc32".to_owned()]));
    assert!(modinfo::parse_modinfo(b"not elf").is_err());
}

#[test]
fn apt_sources_parsing_and_private_sources() {
    let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb-src\nURIs: http://src.invalid/\nSuites: bookworm\n\nTypes: deb\nEnabled: no\nURIs: http://off.invalid/\nSuites: sid\n";
    let entries = apt::parse_deb822(deb822);
    assert_eq!(entries.len(), 2);
    let m = apt::pick_mirrors(&entries).expect("mirrors");
    assert_eq!(m.archive, "http://mirror.invalid/debian");
    assert_eq!(m.security.as_deref(), Some("http://mirror.invalid/debian-security"));
    let one = apt::parse_one_line("# c\ndeb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian bookworm main\ndeb-src http://x bookworm main\n");
    assert_eq!(one, vec![apt::SourceEntry { uri: "http://m.invalid/debian".into(), suites: vec!["bookworm".into()] }]);
    let suites: BTreeSet<String> = ["bullseye", "bookworm-security"].map(String::from).into();
    let text = apt::private_sources(&m, &suites).expect("sources");
    assert!(text.contains("URIs: http://mirror.invalid/debian\nSuites: bullseye\n"), "{text}");
    assert!(text.contains("URIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\n"), "{text}");
    assert!(text.contains(&format!("Signed-By: {}", apt::DEBIAN_KEYRING)));
    let no_sec = apt::Mirrors { archive: "http://a".into(), security: None };
    assert!(apt::private_sources(&no_sec, &suites).is_err());
}

/// A minimal bzImage: boot header with protocol 2.15 and a payload.
fn fake_bzimage(payload: &[u8]) -> Vec<u8> {
    let setup_sects = 1u8;
    let pm = (usize::from(setup_sects) + 1) * 512;
    let mut b = vec![0u8; pm + 100];
    b[0x1f1] = setup_sects;
    b[0x202..0x206].copy_from_slice(b"HdrS");
    b[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
    b[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
    b[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(payload);
    b.extend_from_slice(&[0xAA; 4]);
    b
}

#[test]
fn bzimage_payloads_gzip_xz_zstd_are_extracted_to_elf() {
    let elf = b"\x7fELF\x02\x01\x01 fake vmlinux body".repeat(50);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&elf).expect("gz");
    let gz = gz.finish().expect("gz");
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&elf).expect("xz");
    let xz = xz.finish().expect("xz");
    let zst = zstd::encode_all(&elf[..], 3).expect("zstd");
    for (kind, payload) in [("gzip", gz), ("xz", xz), ("zstd", zst)] {
        let out = bzimage::extract_vmlinux(&fake_bzimage(&payload)).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(out, elf, "{kind}");
    }
    assert_eq!(bzimage::extract_vmlinux(&elf).expect("ELF passes through"), elf);
    let msg = bzimage::extract_vmlinux(b"MZ not a kernel").expect_err("garbage");
    assert!(msg.contains("no xz, zstd or gzip payload"), "{msg}");
}

#[test]
fn lz4_legacy_frames_with_literals_and_overlapping_matches() {
    // Block 1: 3 literals "abc" then a match of 6 at offset 3; then "x".
    let block1 = [0x32, b'a', b'b', b'c', 3, 0, 0x10, b'x'];
    let mut frame = b"\x02\x21\x4c\x18".to_vec();
    frame.extend_from_slice(&(block1.len() as u32).to_le_bytes());
    frame.extend_from_slice(&block1);
    frame.extend_from_slice(&10u32.to_le_bytes()); // the kernel's appended size
    assert_eq!(bzimage::lz4_legacy(&frame).expect("decode"), b"abcabcabcx");
    let bad = [0x12, b'a', 9, 0];
    let mut frame = b"\x02\x21\x4c\x18".to_vec();
    frame.extend_from_slice(&(bad.len() as u32).to_le_bytes());
    frame.extend_from_slice(&bad);
    frame.extend_from_slice(&[0; 4]);
    assert!(bzimage::lz4_legacy(&frame).expect_err("offset").contains("offset 9"));
}
