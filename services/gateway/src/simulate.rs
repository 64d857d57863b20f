//! Tags and victim devices moving around Cheshire, for demos, tests and benchmarks: walking and
//! driving between waypoints near the towns, GPS noise with an accuracy radius (and the odd
//! coarse network fix), signal loss with store-and-forward bursts, battery drain, and now and
//! then a tag heading for its victim's home. Deterministic for a seed.

use hru_wire::v1 as pb;
use rand::{Rng as _, SeedableRng as _};

/// Towns of Cheshire (lat, lon) the simulated people live and move around.
pub const TOWNS: [(&str, f64, f64); 12] = [
    ("Chester", 53.1905, -2.8910),
    ("Crewe", 53.0979, -2.4416),
    ("Warrington", 53.3900, -2.5970),
    ("Macclesfield", 53.2587, -2.1270),
    ("Northwich", 53.2587, -2.5186),
    ("Ellesmere Port", 53.2786, -2.9017),
    ("Nantwich", 53.0670, -2.5220),
    ("Congleton", 53.1631, -2.2126),
    ("Runcorn", 53.3417, -2.7313),
    ("Widnes", 53.3618, -2.7337),
    ("Knutsford", 53.3025, -2.3708),
    ("Wilmslow", 53.3260, -2.2310),
];

const M_PER_DEG: f64 = 111_195.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Parked,
    Walking,
    Driving,
}

#[derive(Debug, Clone)]
struct SimTag {
    id: String,
    victim: String,
    victim_home: (f64, f64),
    town: (f64, f64),
    pos: (f64, f64),
    target: (f64, f64),
    mode: Mode,
    battery: f64,
    seq: u64,
    next_fix_ms: i64,
    signal_back_ms: Option<i64>,
    buffered: Vec<pb::PositionFix>,
}

/// One simulated fix as the vendor hands it over.
#[derive(Debug, Clone, PartialEq)]
pub struct VendorFix {
    /// Device id.
    pub device: String,
    /// A victim's device.
    pub victim: bool,
    /// The fix.
    pub fix: pb::PositionFix,
}

/// The simulation.
pub struct Simulator {
    tags: Vec<SimTag>,
    rng: rand::rngs::StdRng,
    now_ms: i64,
    period_ms: i64,
    /// Chance per fix that a tag turns towards its victim's home.
    pub approach_chance: f64,
    /// Chance per fix that a tag loses its signal for 2 to 30 minutes.
    pub signal_loss_chance: f64,
}

fn offset(p: (f64, f64), north_m: f64, east_m: f64) -> (f64, f64) {
    (
        p.0 + north_m / M_PER_DEG,
        p.1 + east_m / (M_PER_DEG * p.0.to_radians().cos()),
    )
}

fn metres(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    (
        (b.0 - a.0) * M_PER_DEG,
        (b.1 - a.1) * M_PER_DEG * a.0.to_radians().cos(),
    )
}

impl Simulator {
    /// `tags` tags (each paired with a victim device) emitting `rate_hz` fixes per second each,
    /// from `start_ms`.
    pub fn new(seed: u64, tags: usize, rate_hz: f64, start_ms: i64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let period_ms = (1000.0 / rate_hz.max(0.001)).round().max(1.0) as i64;
        let tags = (0..tags)
            .map(|i| {
                let (_, lat, lon) = TOWNS[i % TOWNS.len()];
                let town = (lat, lon);
                let victim_home = offset(town, rng.gen_range(-3_000.0..3_000.0), rng.gen_range(-3_000.0..3_000.0));
                let pos = offset(town, rng.gen_range(-4_000.0..4_000.0), rng.gen_range(-4_000.0..4_000.0));
                SimTag {
                    id: format!("tag-{i}"),
                    victim: format!("vd-{i}"),
                    victim_home,
                    town,
                    pos,
                    target: pos,
                    mode: Mode::Parked,
                    battery: rng.gen_range(40.0..100.0),
                    seq: 0,
                    next_fix_ms: start_ms + rng.gen_range(0..period_ms),
                    signal_back_ms: None,
                    buffered: Vec::new(),
                }
            })
            .collect();
        Self {
            tags,
            rng,
            now_ms: start_ms,
            period_ms,
            approach_chance: 0.0005,
            signal_loss_chance: 0.00005,
        }
    }

    /// The tag ids, victim device ids and victim homes: `(tag, victim device, home)`.
    pub fn pairs(&self) -> Vec<(String, String, (f64, f64))> {
        self.tags
            .iter()
            .map(|t| (t.id.clone(), t.victim.clone(), t.victim_home))
            .collect()
    }

    /// Simulated time, Unix ms.
    pub fn now_ms(&self) -> i64 {
        self.now_ms
    }

    /// Send tag `i` straight to its victim's home (a scripted approach).
    pub fn approach(&mut self, i: usize) {
        if let Some(t) = self.tags.get_mut(i) {
            t.target = t.victim_home;
            t.mode = Mode::Driving;
        }
    }

    /// Advance time by `dt_ms`: the fixes received in that time (store-and-forward bursts
    /// included, with their original device times).
    pub fn step(&mut self, dt_ms: i64) -> Vec<VendorFix> {
        let end = self.now_ms + dt_ms;
        let mut out = Vec::new();
        for i in 0..self.tags.len() {
            while self.tags[i].next_fix_ms <= end {
                let at = self.tags[i].next_fix_ms;
                self.tags[i].next_fix_ms += self.period_ms;
                self.move_tag(i, self.period_ms as f64 / 1000.0);
                let fix = self.fix_of(i, at);
                let t = &mut self.tags[i];
                match t.signal_back_ms {
                    Some(back) if at < back => t.buffered.push(fix),
                    Some(_) => {
                        // Signal is back: the stored fixes arrive now, with the live one.
                        t.signal_back_ms = None;
                        for mut f in t.buffered.drain(..) {
                            f.received_at_ms = at;
                            out.push(VendorFix {
                                device: t.id.clone(),
                                victim: false,
                                fix: f,
                            });
                        }
                        out.push(VendorFix {
                            device: t.id.clone(),
                            victim: false,
                            fix,
                        });
                    }
                    None => {
                        out.push(VendorFix {
                            device: t.id.clone(),
                            victim: false,
                            fix,
                        });
                        if self.rng.gen_bool(self.signal_loss_chance) {
                            let t = &mut self.tags[i];
                            t.signal_back_ms = Some(at + self.rng.gen_range(120_000..1_800_000));
                        }
                    }
                }
                // The victim's phone reports every 30 s, near home.
                if at % 30_000 < self.period_ms {
                    let home = self.tags[i].victim_home;
                    let p = offset(home, self.rng.gen_range(-30.0..30.0), self.rng.gen_range(-30.0..30.0));
                    out.push(VendorFix {
                        device: self.tags[i].victim.clone(),
                        victim: true,
                        fix: pb::PositionFix {
                            fix_seq: (at / 1000) as u64,
                            device_time_ms: at,
                            received_at_ms: at,
                            position: Some(pb::LatLon { lat: p.0, lon: p.1 }),
                            accuracy_m: 10.0,
                            source: pb::FixSource::Gps as i32,
                            battery_percent: 80,
                            strap: pb::StrapState::Unspecified as i32,
                        },
                    });
                }
            }
        }
        self.now_ms = end;
        out
    }

    fn move_tag(&mut self, i: usize, dt_s: f64) {
        let approach = self.rng.gen_bool(self.approach_chance);
        let t = &mut self.tags[i];
        let (dn, de) = metres(t.pos, t.target);
        let left = dn.hypot(de);
        if approach {
            t.target = t.victim_home;
            t.mode = Mode::Driving;
        } else if left < 5.0 {
            // Arrived: park a while, then pick a new waypoint near town.
            t.mode = match self.rng.gen_range(0..10) {
                0..=5 => Mode::Parked,
                6..=8 => Mode::Walking,
                _ => Mode::Driving,
            };
            let reach = if t.mode == Mode::Driving { 6_000.0 } else { 800.0 };
            let base = if t.mode == Mode::Driving { t.town } else { t.pos };
            t.target = offset(
                base,
                self.rng.gen_range(-reach..reach),
                self.rng.gen_range(-reach..reach),
            );
        }
        let speed = match t.mode {
            Mode::Parked => 0.0,
            Mode::Walking => 1.4,
            Mode::Driving => 13.0,
        };
        let step = (speed * dt_s).min(left);
        if left > 0.0 && step > 0.0 {
            t.pos = offset(t.pos, dn / left * step, de / left * step);
        }
        t.battery = (t.battery - 0.5 * dt_s / 3600.0).max(0.0);
        if t.battery < 5.0 {
            t.battery = 100.0; // recharged overnight
        }
    }

    fn fix_of(&mut self, i: usize, at: i64) -> pb::PositionFix {
        let coarse = self.rng.gen_bool(0.02);
        let accuracy = if coarse {
            self.rng.gen_range(100.0..400.0)
        } else {
            self.rng.gen_range(4.0..20.0)
        };
        let noise = accuracy / 2.0;
        let t = &mut self.tags[i];
        t.seq += 1;
        let p = offset(
            t.pos,
            self.rng.gen_range(-noise..noise),
            self.rng.gen_range(-noise..noise),
        );
        pb::PositionFix {
            fix_seq: t.seq,
            device_time_ms: at,
            received_at_ms: at + self.rng.gen_range(50..400),
            position: Some(pb::LatLon { lat: p.0, lon: p.1 }),
            accuracy_m: accuracy,
            source: if coarse {
                pb::FixSource::Network
            } else {
                pb::FixSource::Gps
            } as i32,
            battery_percent: t.battery as u32,
            strap: pb::StrapState::Intact as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_simulation_is_deterministic_and_realistic() {
        let run = || {
            let mut s = Simulator::new(7, 20, 1.0, 1_800_000_000_000);
            s.signal_loss_chance = 0.002;
            (0..600).flat_map(|_| s.step(1_000)).collect::<Vec<_>>()
        };
        let a = run();
        assert_eq!(a, run());
        let tag_fixes = a.iter().filter(|f| !f.victim).count();
        // One fix per second per tag, less what is still stored on tags out of signal.
        assert!((3_000..=12_000).contains(&tag_fixes), "{tag_fixes}");
        assert!(
            a.iter().any(|f| f.fix.received_at_ms - f.fix.device_time_ms > 60_000),
            "store and forward"
        );
        assert!(a.iter().any(|f| f.victim));
        for f in &a {
            let p = f.fix.position.as_ref().expect("position");
            assert!((52.8..53.7).contains(&p.lat) && (-3.3..-1.8).contains(&p.lon), "{p:?}");
        }
    }
}
