
// ---------------------------------------------------------------------------------------
// The CLI around it

#[test]
fn restub_keeps_the_image_and_its_digest() {
    let t = Test::new("restub");
    let root = t.dir.join("root");
    make_rootfs(&root);
    let app = Build::new().dir(&root).entrypoint("/bin/echo").build(&t.dir.join("app.sif"));
    let before = inspect_json(&app);
    let digest = |p: &Path| {
        let out = ok(&mut e2e::bundle(&[OsStr::new("verify"), p.as_os_str()]));
        out.stdout()
    };
    let verified = digest(&app);
    // A stub of another size: the image moves to the next 4096-byte boundary.
    let bigger = t.dir.join("bigger-stub");
    let mut stub = fs::read(stub_bin()).unwrap();
    stub.extend(std::iter::repeat_n(0u8, 5000));
    fs::write(&bigger, stub).unwrap();
    let out = ok(&mut e2e::bundle(&[OsStr::new("restub"), app.as_os_str(), OsStr::new("--stub"), bigger.as_os_str()]));
    assert!(out.stderr().contains("unchanged"), "{out}");
    assert_eq!(digest(&app), verified);
    assert_eq!(inspect_json(&app), before);
    run(&mut t.app(&app, Mode::Extract, &["still", "runs"])).assert_success().assert_stdout("still runs\n");
    let not_a_bundle = t.dir.join("root/bin/busybox");
    run(e2e::bundle(&[OsStr::new("restub"), not_a_bundle.as_os_str()])).assert_bundle_error("busybox");
}

#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ok(&mut e2e::bundle(&[OsStr::new("completions"), OsStr::new(shell)]));
        assert!(out.stdout().contains("restub") && out.stdout().contains("--oci"), "{shell}\n{out}");
    }
    let out = ok(&mut e2e::bundle(&[OsStr::new("man")]));
    assert!(out.stdout().starts_with(".ie") && out.stdout().contains(".TH bundle 1"), "{out}");
    let out = ok(&mut e2e::bundle(&[OsStr::new("man"), OsStr::new("build")]));
    assert!(out.stdout().contains("\\-\\-oci\\-ref"), "{out}");
}

#[test]
fn inspect_shows_the_build_time_as_a_date() {
    let t = Test::new("inspect-date");
    let root = t.dir.join("root");
    make_rootfs(&root);
    let out = t.dir.join("app.sif");
    Build::new().dir(&root).entrypoint("/bin/echo").env("SOURCE_DATE_EPOCH", "1700000000").build(&out);
    let shown = ok(&mut e2e::bundle(&[OsStr::new("inspect"), out.as_os_str()]));
    assert!(shown.stdout().contains("created:     2023-11-14 22:13:20 UTC"), "{shown}");
}
