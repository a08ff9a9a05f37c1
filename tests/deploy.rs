//! The deployment files in deploy/ (Compose stack, Dockerfile, Kubernetes manifests,
//! Prometheus config, alert rules and their unit tests, Grafana dashboard and provisioning)
//! pass scripts/validate-deploy, which checks each with a tool: the Compose JSON schema,
//! dockerfile-parse, kubernetes-validate --strict, promtool. It installs those tools when they
//! are missing (the Debian package prometheus, a Python venv in target/deploy-venv).

use std::path::Path;
use std::process::Command;

#[test]
fn every_deployment_file_passes_scripts_validate_deploy() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join("scripts/validate-deploy"))
        .current_dir(root)
        .output()
        .expect("scripts/validate-deploy runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/validate-deploy failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    // One file of each group, to notice a validator that silently checks nothing.
    for file in [
        "deploy/compose.yaml",
        "deploy/Dockerfile",
        "deploy/k8s/deployment.yaml",
        "deploy/prometheus/tiendo-alerts.test.yml",
        "deploy/grafana/dashboards/tiendo.json",
    ] {
        let ok = format!("ok {file} (");
        assert!(
            stdout.lines().any(|l| l.starts_with(&ok)),
            "{file} was not checked:\n{stdout}"
        );
    }
}
