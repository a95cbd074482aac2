//! Removal of what a killed test run left behind: drop never ran for its namespaces, so they,
//! their veth pairs, nftables tables and any process still inside would stay until reboot and
//! hold subnets. Namespace names carry the creating process's pid: gone pid, stale namespace.

use super::{LINK_PREFIX, NetnsError, PREFIX, Tools, run_tool, teardown};
use std::path::Path;
use std::sync::Once;

/// Sweeps once per process, before its first namespace; problems are printed (a sweep that
/// fails must not fail the test that happened to create the first namespace).
pub(super) fn once(tools: &Tools) {
    static SWEPT: Once = Once::new();
    // Before this process's first namespace, one named with its pid is a dead run's whose
    // pid was reused (and would make `ip netns add` fail with "File exists").
    SWEPT.call_once(|| match sweep_with(tools, true) {
        Ok(removed) if !removed.is_empty() => {
            eprintln!("netns: removed what earlier runs left: {removed:?}");
        }
        Ok(_) => {}
        Err(e) => eprintln!("netns: sweeping stale namespaces failed: {e}"),
    });
}

/// Removes every namespace named `presence-t-PID-N` whose PID no longer runs (killing what
/// still runs inside it, deleting its veth pair; its nftables table goes with it), and every
/// root-side `pntI` link whose peer is in no named namespace. Namespaces of live processes,
/// this one included, are left alone, so it is safe while other tests run. Returns what it
/// removed.
pub fn sweep() -> Result<Vec<String>, NetnsError> {
    sweep_with(&Tools::find()?, false)
}

fn sweep_with(tools: &Tools, mine_too: bool) -> Result<Vec<String>, NetnsError> {
    let me = std::process::id();
    let mut removed = Vec::new();
    let list = run_tool(tools.ip().args(["netns", "list"]))?;
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = owner(name) else { continue };
        let stale = (mine_too && pid == me) || !Path::new(&format!("/proc/{pid}")).exists();
        if !stale {
            continue;
        }
        let links = links_into(tools, name)?;
        // teardown deletes one link; a stale namespace has one, but delete any it has.
        for link in links.iter().skip(1) {
            let _ = run_tool(tools.ip().args(["link", "del", link]));
        }
        teardown(tools, name, links.first().cloned());
        removed.push(name.to_owned());
    }
    // Root-side links whose namespace is gone (or has no name any more): their subnet is
    // locked by their name until they go.
    let links = run_tool(tools.ip().args(["-o", "link", "show"]))?;
    for line in links.lines() {
        let Some(link) = our_link(line) else { continue };
        if !line.contains(" link-netns ") {
            let _ = run_tool(tools.ip().args(["link", "del", &link]));
            removed.push(link);
        }
    }
    Ok(removed)
}

/// The pid in `presence-t-PID-N`.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// The name of our root-side link on a line of `ip -o link show` (`12: pnt7@if11: <...`).
fn our_link(line: &str) -> Option<String> {
    let name = line.split(": ").nth(1)?;
    let name = name.split('@').next()?;
    let index = name.strip_prefix(LINK_PREFIX)?;
    (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())).then(|| name.to_owned())
}

/// Our root-side links whose peer is in namespace `name`.
fn links_into(tools: &Tools, name: &str) -> Result<Vec<String>, NetnsError> {
    let links = run_tool(tools.ip().args(["-o", "link", "show"]))?;
    let wanted = format!(" link-netns {name} ");
    Ok(links
        .lines()
        .filter(|l| format!("{l} ").contains(&wanted))
        .filter_map(our_link)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(owner("presence-t-123-0"), Some(123));
        assert_eq!(owner("presence-t-123"), None);
        assert_eq!(owner("other-123-0"), None);
        let line = "14: pnt4242@if13: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc noqueue \
                    state UP mode DEFAULT group default qlen 1000\\    link/ether 5a:1c brd \
                    ff:ff:ff:ff:ff:ff link-netns presence-t-9-0";
        assert_eq!(our_link(line).as_deref(), Some("pnt4242"));
        assert_eq!(our_link("3: pnts: <UP> mtu"), None);
        assert_eq!(our_link("3: eth0: <UP> mtu"), None);
    }
}
