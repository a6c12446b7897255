//! The Dockerfile, read as text: no container engine runs on our machines,
//! so it cannot be built here. These checks hold it to what the image needs
//! (base images pinned by digest, a stripped binary, cached dependency
//! builds, amd64 and arm64 through buildx, OCI labels naming the version,
//! commit, source and base) so that an edit cannot quietly drop one;
//! whether it builds is verified where Docker runs.

use std::collections::HashMap;

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap()
}

/// Instructions with their continuation lines joined, comments dropped.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

/// The image of every FROM, with `${ARG}` replaced by the ARG's default.
fn base_images(instructions: &[String]) -> Vec<String> {
    let mut args = HashMap::new();
    let mut images = Vec::new();
    for i in instructions {
        if let Some(arg) = i.strip_prefix("ARG ") {
            if let Some((name, value)) = arg.split_once('=') {
                args.insert(format!("${{{name}}}"), value.to_string());
            }
        } else if let Some(from) = i.strip_prefix("FROM ") {
            let image = from
                .split_whitespace()
                .find(|w| !w.starts_with("--"))
                .unwrap()
                .to_string();
            images.push(args.get(&image).cloned().unwrap_or(image));
        }
    }
    images
}

#[test]
fn base_images_are_pinned_by_digest() {
    let images = base_images(&instructions(&dockerfile()));
    assert_eq!(images.len(), 2, "{images:?}");
    for image in &images {
        let digest = image.split_once("@sha256:").map(|(_, d)| d);
        assert!(
            digest.is_some_and(|d| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit())),
            "not pinned by digest: {image}"
        );
        assert!(!image.contains(":latest"), "{image}");
    }
    assert!(
        images[1].starts_with("gcr.io/distroless/cc-debian12:nonroot@"),
        "{images:?}"
    );
}

#[test]
fn builds_a_stripped_binary_with_cached_dependencies_for_amd64_and_arm64() {
    let text = dockerfile();
    let steps = instructions(&text);
    let build = steps
        .iter()
        .find(|i| i.contains("cargo build"))
        .expect("a cargo build step");
    for needed in [
        "--mount=type=cache,target=/usr/local/cargo/registry",
        "--mount=type=cache,target=/src/target",
        "CARGO_PROFILE_RELEASE_STRIP=symbols",
        "CARGO_PROFILE_RELEASE_DEBUG=0",
        "--release --locked",
        // Without the demo and its hyper stack.
        "--no-default-features",
    ] {
        assert!(
            build.contains(needed),
            "the build step lacks {needed}: {build}"
        );
    }
    assert!(
        text.contains("FROM --platform=$BUILDPLATFORM"),
        "cross-compiles on the build platform"
    );
    for (arch, target) in [
        ("amd64", "x86_64-unknown-linux-gnu"),
        ("arm64", "aarch64-unknown-linux-gnu"),
    ] {
        assert!(
            text.contains(&format!("{arch}) target={target}")),
            "no Rust target for TARGETARCH {arch}"
        );
    }
    assert!(text.contains("USER 65532:65532"));
}

/// The runtime image says what it is: the OCI annotation keys
/// (opencontainers image-spec, annotations.md) as LABELs, its version the
/// crate's and the chart's appVersion, its commit and time given at build.
#[test]
fn the_image_carries_oci_labels() {
    let steps = instructions(&dockerfile());
    let runtime = steps
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a runtime stage");
    let labels: Vec<&String> = steps[runtime..]
        .iter()
        .filter(|i| i.starts_with("LABEL "))
        .collect();
    assert_eq!(
        labels.len(),
        1,
        "one LABEL in the runtime stage: {labels:?}"
    );
    let label = labels[0];
    for key in [
        "title",
        "description",
        "version",
        "revision",
        "created",
        "source",
        "licenses",
        "base.name",
    ] {
        let key = format!("org.opencontainers.image.{key}=");
        assert!(label.contains(&key), "no {key} in {label}");
    }
    let arg = |name: &str| {
        steps[runtime..]
            .iter()
            .find_map(|i| i.strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("no ARG {name}= in the runtime stage"))
            .to_string()
    };
    let cargo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let chart = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/charts/ringside/Chart.yaml"
    ))
    .unwrap();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        arg("VERSION"),
        version,
        "the image's version is the crate's"
    );
    assert!(
        chart.contains(&format!("appVersion: \"{version}\"")),
        "the chart's appVersion is the crate's:\n{chart}"
    );
    assert!(
        label.contains("licenses=\"Apache-2.0\"") && cargo.contains("license = \"Apache-2.0\""),
        "the license label is Cargo.toml's: {label}"
    );
    for value in [
        "${VERSION}",
        "${REVISION}",
        "${CREATED}",
        "${RUNTIME_IMAGE}",
    ] {
        assert!(label.contains(value), "{value} not in {label}");
    }
}
