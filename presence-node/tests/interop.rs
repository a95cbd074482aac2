//! Interop with clients nobody on the team wrote: Python `websockets` and `aioquic`, installed
//! into a virtual environment by `.ci/run` (or `scripts/python-env.sh`), which sets
//! `PRESENCE_PYTHON`. Under CI the test fails if that environment is missing.

mod common;

use common::{FAST, Node};

#[test]
fn python_websockets_and_aioquic_clients() {
    let Some(python) = std::env::var_os("PRESENCE_PYTHON") else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the interop test: set PRESENCE_PYTHON (see scripts/python-env.sh)"
        );
        eprintln!("skipped: PRESENCE_PYTHON is not set (run scripts/python-env.sh)");
        return;
    };
    common::init();
    let node = Node::start(FAST);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/client.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(node.ready.ws.to_string())
        .arg(node.ready.quic.to_string())
        .arg(node.ready.admin.to_string())
        .arg(&node.key)
        .arg(node.dir.join("tls/cert.pem"))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "python client failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("interop ok"), "{stdout}");
}
