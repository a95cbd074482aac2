//! The activity model's statistics match its parameters.

use std::collections::HashMap;

use simulator::activity::{ActivityModel, ActivityParams, Ending, Event, EventKind};

#[derive(Default)]
struct Observed {
    devices_seen: Vec<u8>,
    /// (user, device) -> last contact while connected
    last: HashMap<(u32, u8), u64>,
    max_gap: u64,
    last_act: HashMap<u32, u64>,
    gaps: u64,
    long_gaps: u64,
    last_at: u64,
    ordered: bool,
    events: u64,
}

impl Observed {
    fn on(&mut self, e: &Event) {
        if self.events == 0 {
            self.ordered = true;
        }
        self.events += 1;
        self.ordered &= e.at >= self.last_at;
        self.last_at = e.at;
        match e.kind {
            EventKind::Connect { device } => {
                assert!(device < 3);
                self.devices_seen[e.user as usize] |= 1 << device;
                assert!(
                    self.last.insert((e.user, device), e.at).is_none(),
                    "double connect"
                );
            }
            EventKind::Heartbeat { device } | EventKind::Activity { device } => {
                let prev = self
                    .last
                    .insert((e.user, device), e.at)
                    .expect("event on a connected device");
                self.max_gap = self.max_gap.max(e.at - prev);
                if let EventKind::Activity { .. } = e.kind
                    && let Some(a) = self.last_act.insert(e.user, e.at)
                {
                    self.gaps += 1;
                    if e.at - a > 10 * 60_000 {
                        self.long_gaps += 1;
                    }
                }
            }
            EventKind::Disconnect { device, how } => {
                assert!(
                    self.last.remove(&(e.user, device)).is_some(),
                    "disconnect of an idle device"
                );
                if how != Ending::Dropped {
                    self.last_act.remove(&e.user);
                }
            }
            EventKind::Status(_) => {}
        }
    }
}

#[test]
fn online_share_devices_heartbeats_and_idle_stretches_match_the_parameters() {
    let users = 20_000u32;
    let mut p = ActivityParams::new(users, 0.3);
    p.start_hour = 19.5; // centred on the 20:00 peak
    let hb_max = p.heartbeat_ms + p.heartbeat_jitter_ms;
    let mut m = ActivityModel::new(p.clone(), 11).unwrap();

    let mut o = Observed {
        devices_seen: vec![0; users as usize],
        ..Observed::default()
    };
    let mut shares = Vec::new();
    let step = 10_000;
    for k in 1..=(40 * 60_000 / step) {
        m.run_until(k * step, &mut |e: &Event| o.on(e));
        if k * step > 3 * 60_000 {
            shares.push(m.online_users() as f64 / f64::from(users));
        }
        assert_eq!(m.connected_sessions(), o.last.len() as u64);
    }
    let Observed {
        devices_seen,
        max_gap,
        gaps,
        long_gaps,
        ordered,
        ..
    } = o;
    assert!(ordered, "events out of time order");
    let mean_share = shares.iter().sum::<f64>() / shares.len() as f64;
    assert!(
        (mean_share - 0.3).abs() < 0.015,
        "online share {mean_share} vs 0.3 at the peak"
    );
    // Heartbeats keep every connected session inside the 45 s timeout.
    assert!(
        max_gap <= hb_max,
        "a session went {max_gap} ms without contact"
    );
    // Devices: 1 to 3 per user, all three counts present, mean near the weights' mean.
    let owned: Vec<u32> = (0..users).map(|u| m.devices_of(u)).collect();
    assert!(owned.iter().all(|&d| (1..=3).contains(&d)));
    let mean_owned = owned.iter().map(|&d| f64::from(d)).sum::<f64>() / f64::from(users);
    let expect: f64 = p
        .device_weights
        .iter()
        .enumerate()
        .map(|(i, w)| w * (i + 1) as f64)
        .sum();
    assert!(
        (mean_owned - expect).abs() < 0.03,
        "{mean_owned} vs {expect}"
    );
    for k in 1..=3u32 {
        assert!(
            devices_seen.iter().any(|&s| s.count_ones() == k),
            "nobody used {k} devices"
        );
    }
    assert!(
        devices_seen
            .iter()
            .enumerate()
            .all(|(u, &s)| s.count_ones() <= m.devices_of(u as u32))
    );
    // Idle stretches long enough to walk every idle level (> 10 min) happen, but are rare.
    let share_long = long_gaps as f64 / gaps as f64;
    assert!(long_gaps > 50 && share_long < 0.05, "{long_gaps} of {gaps}");
    let c = m.counts();
    assert!(c.drops > 0 && c.vanished > 0 && c.statuses > 0 && c.logouts > 0);
}

#[test]
fn bad_parameters_are_refused() {
    for peak in [0.0, -0.1, 1.01, f64::NAN] {
        assert!(ActivityModel::new(ActivityParams::new(10, peak), 1).is_err());
    }
    assert!(ActivityModel::new(ActivityParams::new(0, 0.3), 1).is_err());
    assert!(ActivityModel::new(ActivityParams::new(10, 1.0), 1).is_ok());
}
