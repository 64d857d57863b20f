//! A state written to a snapshot and read back decides every later input exactly as the state
//! that wrote it: over a random mix of zones (exclusion, curfew, circles), proximity rules,
//! victim and tag fixes (late, out of order, without GPS, tampered, low battery), watermarks,
//! revocations and removals, cut at many points. And every breach decision of that mix
//! replays from the evidence it carries to the same decision.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, ProximityRule, Tag, WeeklyWindow};
use std::collections::HashMap;

use hru_geofence::engine::{Cause, Recorded, find, replay};
use hru_geofence::{Action, Config, Device, Fix, Input, Proximity, State, Zone};
use hru_wire::v1 as pb;
use prost::Message as _;
use rand::{Rng as _, SeedableRng as _};

const HOME: (f64, f64) = (53.1905, -2.8910);
const M: f64 = 1.0 / 111_195.0;
const T0: i64 = 1_800_000_000_000;
const TAGS: usize = 5;

fn square(centre: (f64, f64), half_m: f64) -> String {
    let (dlat, dlon) = (half_m * M, half_m * M / centre.0.to_radians().cos());
    let (lat, lon) = centre;
    format!(
        r#"{{"type":"Polygon","coordinates":[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]}}"#,
        w = lon - dlon,
        e = lon + dlon,
        s = lat - dlat,
        n = lat + dlat
    )
}

fn home(i: usize) -> (f64, f64) {
    (HOME.0 + i as f64 * 5_000.0 * M, HOME.1)
}

fn tag(i: usize) -> String {
    format!("tag-{i}")
}

fn zone(id: u128, i: usize, kind: pb::ZoneKind, geojson: String, radius_m: f64, schedule: Vec<WeeklyWindow>) -> Input {
    let z = Zone::parse(
        &hru_domain::Zone {
            zone_id: uuid::Uuid::from_u128(id),
            version: 1,
            kind,
            tag_id: tag(i).parse().unwrap(),
            geojson,
            radius_m,
            schedule,
            exit_buffer_m: 20.0,
            label: format!("zone {id}"),
        },
        Some(CaseId(uuid::Uuid::from_u128(1000 + i as u128))),
    )
    .unwrap();
    Input::Zone(Box::new(z))
}

/// Setup for every tag, then `n` random inputs.
fn inputs(seed: u64, n: usize) -> Vec<Input> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in 0..TAGS {
        out.push(Input::TagFitted {
            case: Some(CaseId(uuid::Uuid::from_u128(1000 + i as u128))),
            tag: Tag {
                tag_id: tag(i).parse().unwrap(),
                order_id: uuid::Uuid::from_u128(2000 + i as u128),
                victim_device_id: Some(format!("vd-{i}").parse().unwrap()),
                at_ms: T0,
                reason: None,
            },
        });
        out.push(zone(
            10 + i as u128,
            i,
            pb::ZoneKind::Exclusion,
            square(home(i), 150.0),
            0.0,
            vec![],
        ));
        let point = format!(
            r#"{{"type":"Point","coordinates":[{},{}]}}"#,
            home(i).1 + 0.002,
            home(i).0
        );
        out.push(zone(20 + i as u128, i, pb::ZoneKind::Exclusion, point, 120.0, vec![]));
        let nights = (0..7)
            .map(|d| WeeklyWindow {
                day: pb::Weekday::try_from(d + 1).unwrap(),
                start_minute: 19 * 60,
                duration_minutes: 12 * 60,
            })
            .collect();
        out.push(zone(
            30 + i as u128,
            i,
            pb::ZoneKind::Inclusion,
            square(home(i), 2_000.0),
            0.0,
            nights,
        ));
        out.push(Input::Proximity(Box::new(Proximity {
            rule: ProximityRule {
                rule_id: uuid::Uuid::from_u128(40 + i as u128),
                tag_id: tag(i).parse().unwrap(),
                victim_device_id: format!("vd-{i}").parse().unwrap(),
                warning_m: 800.0,
                breach_m: 200.0,
                max_victim_fix_age_s: 300,
            },
            case: Some(CaseId(uuid::Uuid::from_u128(1000 + i as u128))),
            version: 1,
        })));
    }
    let mut now = T0;
    let mut seq = [0u64; TAGS];
    for _ in 0..n {
        now += rng.gen_range(1_000..40_000);
        let i = rng.gen_range(0..TAGS);
        match rng.gen_range(0..100) {
            0..=59 => {
                let mut fixes = Vec::new();
                for _ in 0..rng.gen_range(1..4) {
                    seq[i] += 1;
                    // Mostly near home (in and out of the zones), sometimes far, sometimes late
                    // or out of order, sometimes without GPS.
                    let metres = rng.gen_range(-400.0..3_000.0f64);
                    let at = if rng.gen_bool(0.05) {
                        now - rng.gen_range(60_000..900_000)
                    } else {
                        now
                    };
                    fixes.push(Fix {
                        seq: seq[i],
                        device_ms: at,
                        received_ms: now + if rng.gen_bool(0.1) { 120_000 } else { 500 },
                        position: (!rng.gen_bool(0.05)).then(|| (home(i).0 + metres * M, home(i).1)),
                        accuracy_m: rng.gen_range(3.0..60.0),
                        battery: if rng.gen_bool(0.03) { 10 } else { 80 },
                        tampered: rng.gen_bool(0.02),
                        batch: uuid::Uuid::from_u128(rng.r#gen()),
                    });
                }
                out.push(Input::Fixes {
                    device: Device::Tag(tag(i).parse().unwrap()),
                    fixes,
                });
            }
            60..=84 => {
                let metres = rng.gen_range(-300.0..1_500.0f64);
                out.push(Input::Fixes {
                    device: Device::Victim(format!("vd-{i}").parse().unwrap()),
                    fixes: vec![Fix {
                        seq: 0,
                        device_ms: now,
                        received_ms: now,
                        position: Some((home(i).0 + metres * M, home(i).1)),
                        accuracy_m: rng.gen_range(3.0..40.0),
                        battery: 90,
                        tampered: false,
                        batch: uuid::Uuid::from_u128(rng.r#gen()),
                    }],
                });
            }
            85..=95 => out.push(Input::Watermark {
                at_ms: now - rng.gen_range(0..600_000),
            }),
            96 => out.push(Input::ZoneRevoked {
                zone: uuid::Uuid::from_u128(20 + i as u128),
                at_ms: now,
            }),
            97 => out.push(Input::TagRemoved {
                tag: tag(i).parse().unwrap(),
            }),
            _ => out.push(zone(
                10 + i as u128,
                i,
                pb::ZoneKind::Exclusion,
                square(home(i), rng.gen_range(50.0..400.0)),
                0.0,
                vec![],
            )),
        }
    }
    out
}

fn run(state: &mut State, inputs: &[Input]) -> Vec<Action> {
    inputs.iter().flat_map(|i| state.apply(i)).collect()
}

/// The state as its bytes, read back as a new state.
fn through_snapshot(state: &State) -> State {
    let bytes = state.to_snapshot().encode_to_vec();
    let wire = pb::EngineState::decode(bytes.as_slice()).unwrap();
    let back = State::from_snapshot(*state.config(), &wire).unwrap();
    assert_eq!(
        back.to_snapshot().encode_to_vec(),
        bytes,
        "a state read back writes the same bytes"
    );
    back
}

#[test]
fn a_state_read_back_from_its_snapshot_decides_the_rest_exactly_as_the_original() {
    for seed in 0..4u64 {
        let inputs = inputs(seed, 1_500);
        let mut whole = State::new(Config::default());
        let all = run(&mut whole, &inputs);
        let breaches = all.iter().filter(|a| matches!(a, Action::Breach(_))).count();
        assert!(breaches > 20, "seed {seed}: the workload raises breaches ({breaches})");
        for cut in (0..inputs.len()).step_by(97) {
            let mut first = State::new(Config::default());
            let mut got = run(&mut first, &inputs[..cut]);
            let mut second = through_snapshot(&first);
            got.extend(run(&mut second, &inputs[cut..]));
            assert_eq!(got, all, "seed {seed}, cut at input {cut}");
        }
    }
}

#[test]
fn a_damaged_snapshot_is_refused_naming_the_field() {
    let mut state = State::new(Config::default());
    run(&mut state, &inputs(7, 300));
    let mut wire = state.to_snapshot();
    wire.tags[0].open.push(pb::SnapshotEpisode {
        key: Some(pb::SnapshotRuleKey {
            rule: 9,
            id: vec![0; 16],
            device_kind: 0,
        }),
        ..Default::default()
    });
    let e = State::from_snapshot(Config::default(), &wire).err().unwrap();
    assert!(e.at.ends_with(".key.rule"), "{e}");
    let mut wire = state.to_snapshot();
    wire.zones[0].core.as_mut().unwrap().geojson = "{".into();
    let e = State::from_snapshot(Config::default(), &wire).err().unwrap();
    assert_eq!(e.at, "zones[0].core.geojson", "{e}");
}

#[test]
fn positions_past_retention_are_forgotten() {
    let mut state = State::new(Config::default());
    let inputs = inputs(3, 400);
    run(&mut state, &inputs);
    let last = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Fixes { fixes, .. } => fixes.iter().map(|f| f.device_ms).max(),
            _ => None,
        })
        .max()
        .unwrap();
    assert_eq!(state.forget_positions_before(T0), 0, "nothing is older than the start");
    assert!(
        state.forget_positions_before(last + 1) > 0,
        "every fix is older than the end"
    );
    let wire = state.to_snapshot();
    assert!(wire.tags.iter().all(|t| t.last_fix.is_none()), "no tag keeps a fix");
    assert!(wire.victims.is_empty(), "no victim fix is kept");
}

/// Over the same random mix, every breach update replays from its own evidence — a fresh
/// engine told only the zone or rule definition its evidence names by digest, the recorded
/// state before the deciding input and that input — to exactly the update recorded, evidence
/// included. An update moved to another episode (its id changed) does not.
#[test]
fn every_breach_decision_replays_from_its_evidence() {
    for seed in 0..4u64 {
        let inputs = inputs(seed, 1_500);
        let mut state = State::new(Config::default());
        // Every definition ever told, by digest, as `hru geofence explain` finds them in a log.
        let mut definitions: HashMap<[u8; 32], Input> = HashMap::new();
        let (mut replayed, mut moved) = (0, 0);
        for input in &inputs {
            let actions = state.apply(input);
            for a in &actions {
                let Action::Breach(u) = a else { continue };
                assert!(
                    !matches!(u.evidence.cause, Cause::Clock(_)),
                    "the engine never decides by the clock"
                );
                let setup: Vec<Input> = u
                    .evidence
                    .rule_digest
                    .map(|d| match definitions[&d].clone() {
                        Input::Proximity(mut p) => {
                            p.version = u.evidence.rule_version;
                            Input::Proximity(p)
                        }
                        zone => zone,
                    })
                    .into_iter()
                    .collect();
                let recorded = Recorded {
                    tag: &u.tag,
                    case: u.case,
                    breach_id: u.breach_id,
                    kind: u.kind,
                    rule_id: u.rule_id,
                    evidence: &u.evidence,
                };
                let again = replay(&setup, &recorded).unwrap();
                let got = find(&again, u);
                assert_eq!(
                    got,
                    Some(u),
                    "seed {seed}: {} replayed from its evidence",
                    u.message_id()
                );
                // Through the wire, too.
                let wire = hru_geofence::Evidence::from_wire(&u.evidence.to_wire()).unwrap();
                assert_eq!(wire, *u.evidence, "seed {seed}: evidence through its wire form");
                replayed += 1;
                if u.evidence.prior.episode.is_some() {
                    let other = uuid::Uuid::from_u128(u.breach_id.as_u128() ^ 1);
                    let forged = hru_geofence::BreachUpdate {
                        breach_id: other,
                        ..u.clone()
                    };
                    let again = replay(
                        &setup,
                        &Recorded {
                            breach_id: other,
                            ..recorded
                        },
                    )
                    .unwrap();
                    assert_eq!(
                        find(&again, &forged),
                        None,
                        "seed {seed}: an update moved to episode {other}"
                    );
                    moved += 1;
                }
            }
            match input {
                Input::Zone(z) => {
                    definitions.insert(hru_geofence::engine::zone_digest(z), input.clone());
                }
                Input::Proximity(p) => {
                    definitions.insert(hru_geofence::engine::rule_digest(&p.rule), input.clone());
                }
                _ => {}
            }
        }
        assert!(
            replayed > 20 && moved > 10,
            "seed {seed}: decisions to replay ({replayed}, {moved} of open episodes)"
        );
    }
}
