//! Given/when/then tests of every geofence rule on the pure engine.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test fails by panicking

use hru_domain::{CaseId, ProximityRule, Tag, WeeklyWindow};
use hru_geofence::{Action, BreachUpdate, Config, Device, Fix, Input, Proximity, State, Zone};
use hru_wire::v1 as pb;

/// Home of the victim in Chester (lat, lon).
const HOME: (f64, f64) = (53.1905, -2.8910);
const TAG: &str = "tag-1";
const M: f64 = 1.0 / 111_195.0; // one metre of latitude in degrees
const T0: i64 = 1_800_000_000_000; // Fri 15 Jan 2027 08:00 UTC

struct Given {
    state: State,
    actions: Vec<Action>,
    seq: u64,
}

fn square_around(centre: (f64, f64), half_m: f64) -> String {
    let dlat = half_m * M;
    let dlon = half_m * M / centre.0.to_radians().cos();
    let (lat, lon) = centre;
    format!(
        r#"{{"type":"Polygon","coordinates":[[[{w},{s}],[{e},{s}],[{e},{n}],[{w},{n}],[{w},{s}]]]}}"#,
        w = lon - dlon,
        e = lon + dlon,
        s = lat - dlat,
        n = lat + dlat
    )
}

fn zone(id: u128, kind: pb::ZoneKind, geojson: String, radius_m: f64, schedule: Vec<WeeklyWindow>) -> Zone {
    Zone::parse(
        &hru_domain::Zone {
            zone_id: uuid::Uuid::from_u128(id),
            version: 1,
            kind,
            tag_id: TAG.parse().unwrap(),
            geojson,
            radius_m,
            schedule,
            exit_buffer_m: 20.0,
            label: "test".into(),
        },
        Some(CaseId(uuid::Uuid::from_u128(7))),
    )
    .unwrap()
}

/// `metres` north of HOME.
fn north(metres: f64) -> (f64, f64) {
    (HOME.0 + metres * M, HOME.1)
}

impl Given {
    fn new() -> Self {
        let mut g = Self {
            state: State::new(Config::default()),
            actions: Vec::new(),
            seq: 0,
        };
        g.input(Input::TagFitted {
            case: Some(CaseId(uuid::Uuid::from_u128(7))),
            tag: Tag {
                tag_id: TAG.parse().unwrap(),
                order_id: uuid::Uuid::from_u128(3),
                victim_device_id: Some("vd-1".parse().unwrap()),
                at_ms: T0,
                reason: None,
            },
        });
        g
    }

    fn exclusion_square(mut self, half_m: f64) -> Self {
        let z = zone(1, pb::ZoneKind::Exclusion, square_around(HOME, half_m), 0.0, vec![]);
        self.input(Input::Zone(Box::new(z)));
        self
    }

    fn input(&mut self, input: Input) {
        let actions = self.state.apply(&input);
        self.actions.extend(actions);
    }

    /// A tag fix at `at` (device time), received `delay_ms` later.
    fn fix_at(&mut self, at: i64, position: Option<(f64, f64)>, accuracy_m: f64, delay_ms: i64) {
        self.seq += 1;
        self.input(Input::Fixes {
            device: Device::Tag(TAG.parse().unwrap()),
            fixes: vec![Fix {
                seq: self.seq,
                device_ms: at,
                received_ms: at + delay_ms,
                position,
                accuracy_m,
                battery: 80,
                tampered: false,
                batch: uuid::Uuid::nil(),
            }],
        });
    }

    fn breaches(&self) -> Vec<&BreachUpdate> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Breach(b) => Some(b),
                _ => None,
            })
            .collect()
    }

    /// Openings and closings of `kind` (periodic UPDATED reports left out).
    fn states(&self, kind: pb::BreachKind) -> Vec<pb::BreachState> {
        self.breaches()
            .iter()
            .filter(|b| b.kind == kind && b.state != pb::BreachState::Updated)
            .map(|b| b.state)
            .collect()
    }
}

#[test]
fn an_exclusion_breach_opens_inside_and_closes_after_three_clear_fixes() {
    let mut g = Given::new().exclusion_square(100.0);
    g.fix_at(T0 + 1_000, Some(north(500.0)), 10.0, 500);
    assert!(g.breaches().is_empty(), "far away: nothing");
    g.fix_at(T0 + 2_000, Some(north(0.0)), 10.0, 500);
    assert_eq!(g.states(pb::BreachKind::Exclusion), [pb::BreachState::Opened]);
    let opened = g.breaches()[0].clone();
    assert!(
        matches!(opened.evidence.cause, hru_geofence::engine::Cause::TagFix(f) if f.seq == 2),
        "{:?}",
        opened.evidence
    );
    assert_eq!(opened.evidence.rule_version, 1);
    assert!(!opened.late);
    assert!(
        g.actions
            .iter()
            .any(|a| matches!(a, Action::VictimAlert { victim_device, .. } if victim_device.as_str() == "vd-1")),
        "the victim is alerted in parallel"
    );
    // Two clear fixes do not close it; the third does.
    for i in 0..3 {
        g.fix_at(T0 + 3_000 + i * 1_000, Some(north(200.0)), 10.0, 500);
    }
    assert_eq!(
        g.states(pb::BreachKind::Exclusion),
        [pb::BreachState::Opened, pb::BreachState::Closed]
    );
    assert_eq!(g.breaches()[1].breach_id, opened.breach_id);
    assert!(g.breaches()[1].evidence.hysteresis.contains("3 fixes"));
}

#[test]
fn gps_jitter_along_an_edge_raises_one_episode_not_a_storm() {
    let mut g = Given::new().exclusion_square(100.0);
    // The tag loiters on the northern edge: fixes wander ±25 m across it for 10 minutes.
    for i in 0..600 {
        let wobble = 25.0 * ((i as f64) * 0.7).sin();
        g.fix_at(T0 + i * 1_000, Some(north(100.0 + wobble)), 8.0, 300);
    }
    let states = g.states(pb::BreachKind::Exclusion);
    let opened = states.iter().filter(|s| **s == pb::BreachState::Opened).count();
    assert!(opened <= 1, "one episode at most: {states:?}");
    let possible = g
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Possible { .. }))
        .count();
    assert!(
        possible <= 1,
        "possible is reported once per episode, not per fix: {possible}"
    );
}

#[test]
fn an_accuracy_circle_that_straddles_the_boundary_is_possible_not_a_breach() {
    let mut g = Given::new().exclusion_square(100.0);
    // 5 m inside the edge, 30 m accuracy.
    g.fix_at(T0 + 1_000, Some(north(95.0)), 30.0, 500);
    assert!(g.breaches().is_empty(), "{:?}", g.breaches());
    assert!(matches!(g.actions.last(), Some(Action::Possible { fix_seq: 1, .. })));
    // A confident fix inside confirms it.
    g.fix_at(T0 + 2_000, Some(north(50.0)), 5.0, 500);
    assert_eq!(g.states(pb::BreachKind::Exclusion), [pb::BreachState::Opened]);
}

#[test]
fn circle_and_multipolygon_zones() {
    let mut g = Given::new();
    let point = format!(r#"{{"type":"Point","coordinates":[{},{}]}}"#, HOME.1, HOME.0);
    g.input(Input::Zone(Box::new(zone(
        2,
        pb::ZoneKind::Exclusion,
        point,
        150.0,
        vec![],
    ))));
    g.fix_at(T0 + 1_000, Some(north(100.0)), 10.0, 0);
    assert_eq!(g.states(pb::BreachKind::Exclusion), [pb::BreachState::Opened]);
    assert!(
        (g.breaches()[0].distance_m - 50.0).abs() < 1.0,
        "{}",
        g.breaches()[0].distance_m
    );

    let mut g = Given::new();
    let work = (HOME.0 + 0.02, HOME.1 + 0.01);
    let a = square_around(HOME, 50.0);
    let b = square_around(work, 50.0);
    let ring = |s: &str| s[s.find("[[[").unwrap() + 1..s.rfind("]]]").unwrap() + 2].to_owned();
    let multi = format!(
        r#"{{"type":"MultiPolygon","coordinates":[[{}],[{}]]}}"#,
        ring(&a),
        ring(&b)
    );
    g.input(Input::Zone(Box::new(zone(
        3,
        pb::ZoneKind::Exclusion,
        multi,
        0.0,
        vec![],
    ))));
    g.fix_at(T0 + 1_000, Some(work), 5.0, 0);
    assert_eq!(g.states(pb::BreachKind::Exclusion), [pb::BreachState::Opened]);
}

fn london(y: i16, mo: i8, d: i8, h: i8, mi: i8) -> i64 {
    jiff::civil::date(y, mo, d)
        .at(h, mi, 0, 0)
        .in_tz("Europe/London")
        .unwrap()
        .timestamp()
        .as_millisecond()
}

/// A curfew at HOME from Saturday 19:00 for 12 wall-clock hours (to Sunday 07:00).
fn curfew() -> Given {
    let mut g = Given::new();
    let window = WeeklyWindow {
        day: pb::Weekday::Saturday,
        start_minute: 19 * 60,
        duration_minutes: 12 * 60,
    };
    let z = zone(4, pb::ZoneKind::Inclusion, square_around(HOME, 60.0), 0.0, vec![window]);
    g.input(Input::Zone(Box::new(z)));
    g
}

#[test]
fn curfews_follow_london_wall_clock_across_the_march_gap() {
    // Last Sunday of March 2027 is the 28th: clocks go 01:00 GMT -> 02:00 BST.
    let mut g = curfew();
    g.fix_at(london(2027, 3, 28, 6, 30), Some(north(2_000.0)), 10.0, 0);
    assert_eq!(
        g.states(pb::BreachKind::Curfew),
        [pb::BreachState::Opened],
        "06:30 BST is in curfew"
    );
    let mut g = curfew();
    // 07:30 BST is 06:30 UTC: twelve real hours after 19:00 GMT would wrongly still be curfew.
    g.fix_at(london(2027, 3, 28, 7, 30), Some(north(2_000.0)), 10.0, 0);
    assert!(
        g.states(pb::BreachKind::Curfew).is_empty(),
        "07:30 BST is after the curfew"
    );
    // Inside the zone during the curfew: no breach.
    let mut g = curfew();
    g.fix_at(london(2027, 3, 27, 23, 0), Some(HOME), 10.0, 0);
    assert!(g.states(pb::BreachKind::Curfew).is_empty());
}

#[test]
fn curfews_follow_london_wall_clock_across_the_october_fold() {
    // Last Sunday of October 2026 is the 25th: clocks go 02:00 BST -> 01:00 GMT.
    let mut g = curfew();
    // 06:30 GMT: twelve real hours after 19:00 BST ended at 06:00 GMT, but the curfew runs to 07:00.
    g.fix_at(london(2026, 10, 25, 6, 30), Some(north(2_000.0)), 10.0, 0);
    assert_eq!(g.states(pb::BreachKind::Curfew), [pb::BreachState::Opened]);
    let mut g = curfew();
    g.fix_at(london(2026, 10, 25, 7, 5), Some(north(2_000.0)), 10.0, 0);
    assert!(
        g.states(pb::BreachKind::Curfew).is_empty(),
        "07:05 GMT is after the curfew"
    );
    // During the repeated hour (01:30 happens twice) the curfew holds both times.
    let mut g = curfew();
    let first = london(2026, 10, 25, 1, 30);
    g.fix_at(first, Some(north(2_000.0)), 10.0, 0);
    g.fix_at(first + 3_600_000, Some(north(2_000.0)), 10.0, 0);
    assert_eq!(g.states(pb::BreachKind::Curfew), [pb::BreachState::Opened]);
}

#[test]
fn a_late_batch_after_thirty_minutes_of_signal_loss_reveals_a_past_breach_reported_late() {
    let mut g = Given::new().exclusion_square(100.0);
    g.fix_at(T0, Some(north(1_000.0)), 10.0, 200);
    // Signal lost for 30 minutes; the device stored its fixes and forwards them in one burst.
    let burst_received = T0 + 31 * 60_000;
    let mut fixes = Vec::new();
    for i in 1..=30 {
        let at = T0 + i * 60_000;
        let position = if (10..=14).contains(&i) {
            north(0.0)
        } else {
            north(1_000.0)
        };
        fixes.push(Fix {
            seq: 100 + i as u64,
            device_ms: at,
            received_ms: burst_received,
            position: Some(position),
            accuracy_m: 8.0,
            battery: 70,
            tampered: false,
            batch: uuid::Uuid::nil(),
        });
    }
    fixes.reverse(); // forwarded newest first: the engine orders them by device time
    g.input(Input::Fixes {
        device: Device::Tag(TAG.parse().unwrap()),
        fixes,
    });
    assert_eq!(
        g.states(pb::BreachKind::Exclusion),
        [pb::BreachState::Opened, pb::BreachState::Closed]
    );
    let b = g.breaches();
    assert!(b.iter().all(|b| b.late), "found late, reported late");
    assert_eq!(b[0].opened_at_ms, T0 + 10 * 60_000, "opened at the first fix inside");
    assert_eq!(b.len(), 2 + 4, "opened, updated each minute inside, closed: {b:?}");
}

#[test]
fn an_out_of_order_fix_showing_an_uncovered_breach_is_raised_late_not_dropped() {
    let mut g = Given::new().exclusion_square(100.0);
    g.fix_at(T0 + 60_000, Some(north(1_000.0)), 10.0, 0);
    // A fix taken earlier arrives after: it was inside the zone.
    g.fix_at(T0 + 30_000, Some(north(0.0)), 10.0, 60_000);
    let b = g.breaches();
    assert_eq!(b.len(), 2);
    assert!(b.iter().all(|b| b.late && b.opened_at_ms == T0 + 30_000));
}

fn proximity(mut g: Given, max_age_s: u32) -> Given {
    g.input(Input::Proximity(Box::new(Proximity {
        rule: ProximityRule {
            rule_id: uuid::Uuid::from_u128(9),
            tag_id: TAG.parse().unwrap(),
            victim_device_id: "vd-1".parse().unwrap(),
            warning_m: 1_000.0,
            breach_m: 200.0,
            max_victim_fix_age_s: max_age_s,
        },
        case: None,
        version: 1,
    })));
    g
}

fn victim_at(g: &mut Given, at: i64, position: (f64, f64)) {
    g.input(Input::Fixes {
        device: Device::Victim("vd-1".parse().unwrap()),
        fixes: vec![Fix {
            seq: 1,
            device_ms: at,
            received_ms: at,
            position: Some(position),
            accuracy_m: 10.0,
            battery: 90,
            tampered: false,
            batch: uuid::Uuid::nil(),
        }],
    });
}

#[test]
fn proximity_warns_at_the_outer_distance_and_breaches_at_the_inner() {
    let mut g = proximity(Given::new(), 300);
    victim_at(&mut g, T0, HOME);
    g.fix_at(T0 + 10_000, Some(north(800.0)), 10.0, 0);
    assert_eq!(g.states(pb::BreachKind::ProximityWarning), [pb::BreachState::Opened]);
    assert!(g.states(pb::BreachKind::Proximity).is_empty());
    g.fix_at(T0 + 20_000, Some(north(150.0)), 10.0, 0);
    assert_eq!(g.states(pb::BreachKind::Proximity), [pb::BreachState::Opened]);
    assert!(
        g.actions
            .iter()
            .any(|a| matches!(a, Action::VictimAlert { kind, .. } if *kind == pb::BreachKind::Proximity))
    );
    // Within the breach distance only by the accuracies: possible, not confirmed.
    let mut g = proximity(Given::new(), 300);
    victim_at(&mut g, T0, HOME);
    g.fix_at(T0 + 10_000, Some(north(205.0)), 10.0, 0);
    assert!(g.states(pb::BreachKind::Proximity).is_empty());
}

#[test]
fn a_stale_victim_fix_is_reported_not_used() {
    let mut g = proximity(Given::new(), 120);
    victim_at(&mut g, T0, HOME);
    g.fix_at(T0 + 10 * 60_000, Some(north(50.0)), 10.0, 0);
    assert!(g.breaches().is_empty(), "{:?}", g.breaches());
    assert!(
        g.actions.iter().any(|a| matches!(
            a,
            Action::StaleVictimFix {
                age_ms: Some(600_000),
                ..
            }
        )),
        "{:?}",
        g.actions
    );
}

#[test]
fn a_tag_with_no_fixes_for_t_raises_no_fix_then_no_communication() {
    let mut g = Given::new();
    let config = Config::default();
    g.input(Input::Watermark {
        at_ms: T0 + config.no_fix_after_ms - 1,
    });
    assert!(g.breaches().is_empty());
    g.input(Input::Watermark {
        at_ms: T0 + config.no_fix_after_ms + 1,
    });
    assert_eq!(g.states(pb::BreachKind::NoFix), [pb::BreachState::Opened]);
    g.input(Input::Watermark {
        at_ms: T0 + config.no_comm_after_ms + 1,
    });
    assert_eq!(g.states(pb::BreachKind::NoCommunication), [pb::BreachState::Opened]);
    // Any message closes no-communication; a GPS fix closes no-fix.
    g.fix_at(T0 + config.no_comm_after_ms + 2, None, 0.0, 0);
    assert_eq!(
        g.states(pb::BreachKind::NoCommunication),
        [pb::BreachState::Opened, pb::BreachState::Closed]
    );
    assert_eq!(g.states(pb::BreachKind::NoFix), [pb::BreachState::Opened]);
    g.fix_at(T0 + config.no_comm_after_ms + 3, Some(north(3_000.0)), 10.0, 0);
    assert_eq!(
        g.states(pb::BreachKind::NoFix),
        [pb::BreachState::Opened, pb::BreachState::Closed]
    );
}

#[test]
fn a_fitting_read_after_event_time_passed_its_limits_is_judged_at_once() {
    // The party's view can bring a tag's fitting after the gateways' later batches: the tag
    // was heard once, then event time ran twenty minutes on before the fitting arrived. The
    // silence is judged when the fitting is read, not left until the next heartbeat.
    let config = Config::default();
    let mut g = Given {
        state: State::new(config),
        actions: Vec::new(),
        seq: 0,
    };
    g.fix_at(T0, Some(north(3_000.0)), 10.0, 0);
    g.input(Input::Watermark {
        at_ms: T0 + config.no_comm_after_ms + 60_000,
    });
    assert!(g.breaches().is_empty(), "an unfitted tag is not judged");
    g.input(Input::TagFitted {
        case: Some(CaseId(uuid::Uuid::from_u128(7))),
        tag: Tag {
            tag_id: TAG.parse().unwrap(),
            order_id: uuid::Uuid::from_u128(3),
            victim_device_id: None,
            at_ms: T0 - 60_000,
            reason: None,
        },
    });
    assert_eq!(g.states(pb::BreachKind::NoCommunication), [pb::BreachState::Opened]);
    assert_eq!(g.states(pb::BreachKind::NoFix), [pb::BreachState::Opened]);
    // The next heartbeat raises nothing again.
    g.input(Input::Watermark {
        at_ms: T0 + config.no_comm_after_ms + 120_000,
    });
    assert_eq!(g.states(pb::BreachKind::NoCommunication), [pb::BreachState::Opened]);
    assert_eq!(g.states(pb::BreachKind::NoFix), [pb::BreachState::Opened]);
}

#[test]
fn strap_tamper_and_low_battery() {
    let mut g = Given::new();
    g.input(Input::Fixes {
        device: Device::Tag(TAG.parse().unwrap()),
        fixes: vec![Fix {
            seq: 1,
            device_ms: T0 + 1_000,
            received_ms: T0 + 1_000,
            position: Some(north(3_000.0)),
            accuracy_m: 5.0,
            battery: 9,
            tampered: true,
            batch: uuid::Uuid::nil(),
        }],
    });
    assert_eq!(g.states(pb::BreachKind::Tamper), [pb::BreachState::Opened]);
    assert_eq!(g.states(pb::BreachKind::BatteryLow), [pb::BreachState::Opened]);
    g.fix_at(T0 + 2_000, Some(north(3_000.0)), 5.0, 0);
    assert_eq!(
        g.states(pb::BreachKind::Tamper),
        [pb::BreachState::Opened, pb::BreachState::Closed]
    );
}

#[test]
fn replaying_the_same_inputs_raises_the_same_breach_ids() {
    let run = || {
        let mut g = Given::new().exclusion_square(100.0);
        g.fix_at(T0 + 1_000, Some(north(0.0)), 10.0, 0);
        for i in 0..5 {
            g.fix_at(T0 + 2_000 + i * 1_000, Some(north(500.0)), 10.0, 0);
        }
        g.breaches().iter().map(|b| b.message_id()).collect::<Vec<_>>()
    };
    let first = run();
    assert_eq!(first.len(), 2);
    assert_eq!(first, run());
}

#[test]
fn bad_zones_are_refused_naming_the_field() {
    let bad = |geojson: &str, radius: f64| {
        Zone::parse(
            &hru_domain::Zone {
                zone_id: uuid::Uuid::from_u128(1),
                version: 1,
                kind: pb::ZoneKind::Exclusion,
                tag_id: TAG.parse().unwrap(),
                geojson: geojson.into(),
                radius_m: radius,
                schedule: vec![],
                exit_buffer_m: 10.0,
                label: String::new(),
            },
            None,
        )
        .unwrap_err()
        .to_string()
    };
    assert!(bad("{", 0.0).contains("geojson: is not GeoJSON"));
    assert!(bad(r#"{"type":"Point","coordinates":[-2.9,53.2]}"#, 0.0).contains("radius_m"));
    assert!(bad(r#"{"type":"Point","coordinates":[53.2,-200.0]}"#, 10.0).contains("RFC 7946"));
    assert!(bad(r#"{"type":"LineString","coordinates":[[-2.9,53.2],[-2.8,53.2]]}"#, 0.0).contains("LineString"));
}

#[test]
fn a_tag_with_many_zones_is_judged_against_each_and_never_against_another_tags() {
    let mut g = Given::new();
    // 40 exclusion zones 1 km apart (more than a scan of one tag's zones covers, so they are
    // searched through an index), defined out of id order; and a zone of another tag over
    // the first of them.
    let centre = |k: u128| (HOME.0 + (k as f64) * 1_000.0 * M, HOME.1);
    for k in (0..40u128).rev() {
        let z = zone(
            100 + k,
            pb::ZoneKind::Exclusion,
            square_around(centre(k), 50.0),
            0.0,
            vec![],
        );
        g.input(Input::Zone(Box::new(z)));
    }
    let mut other = zone(
        99,
        pb::ZoneKind::Exclusion,
        square_around(north(600.0), 50.0),
        0.0,
        vec![],
    );
    other.tag = "tag-2".parse().unwrap();
    other.definition.tag_id = other.tag.clone();
    g.input(Input::Zone(Box::new(other)));
    g.fix_at(T0 + 1_000, Some(north(600.0)), 5.0, 0);
    assert!(g.breaches().is_empty(), "another tag's zone binds only that tag");
    let mut at = T0 + 2_000;
    let opened = |g: &Given| -> Vec<uuid::Uuid> {
        g.breaches()
            .iter()
            .filter(|b| b.state == pb::BreachState::Opened)
            .map(|b| b.rule_id)
            .collect()
    };
    for k in [39u128, 0, 17, 25] {
        g.fix_at(at, Some(centre(k)), 5.0, 0);
        at += 1_000;
        assert_eq!(opened(&g).last(), Some(&uuid::Uuid::from_u128(100 + k)), "zone {k}");
    }
    assert_eq!(opened(&g).len(), 4);
    // Revoking all but two of them leaves a scan; the remaining ones still apply.
    for k in 2..40u128 {
        g.input(Input::ZoneRevoked {
            zone: uuid::Uuid::from_u128(100 + k),
            at_ms: at,
        });
    }
    g.fix_at(at + 1_000, Some(centre(1)), 5.0, 0);
    assert_eq!(opened(&g).last(), Some(&uuid::Uuid::from_u128(101)));
    g.fix_at(at + 2_000, Some(centre(30)), 5.0, 0);
    assert_eq!(opened(&g).len(), 5, "a revoked zone no longer applies");
}
