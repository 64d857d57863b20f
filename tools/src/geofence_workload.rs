//! Engine benchmarks: fixes per second through the engine over many zones and tags, beside the
//! raw building block (an R-tree lookup plus point-in-polygon with `geo`) measured in the same
//! run; and the resident memory of a large state.

use std::time::Instant;

use geo::Contains as _;
use hru_wire::v1 as pb;
use rand::{Rng as _, SeedableRng as _};
use rstar::{AABB, RTree, RTreeObject};

use hru_geofence::{Config, Device, Fix, Input, State, Zone};

const M_PER_DEG: f64 = 111_195.0;

/// A synthetic deployment: one octagonal exclusion zone per tag around Cheshire, and fixes of
/// each tag within a few kilometres of its zone (about 1 in 50 inside).
pub struct Workload {
    /// Zone definitions.
    pub zones: Vec<Zone>,
    /// Polygons in degrees, for the raw measurement.
    pub polygons: Vec<geo::Polygon<f64>>,
    /// Fixes as engine inputs, one device each.
    pub inputs: Vec<Input>,
}

fn octagon(centre: (f64, f64), radius_m: f64) -> Vec<(f64, f64)> {
    let mut ring: Vec<(f64, f64)> = (0..8)
        .map(|k| {
            let a = f64::from(k) * std::f64::consts::PI / 4.0;
            (
                centre.1 + radius_m * a.cos() / (M_PER_DEG * centre.0.to_radians().cos()),
                centre.0 + radius_m * a.sin() / M_PER_DEG,
            )
        })
        .collect();
    ring.push(ring[0]);
    ring
}

impl Workload {
    /// Each zone's centre, `(lat, lon)`, in zone order.
    pub fn centres(&self) -> Vec<(f64, f64)> {
        self.zones
            .iter()
            .map(|z| {
                let b = z.bbox;
                ((b.lower()[1] + b.upper()[1]) / 2.0, (b.lower()[0] + b.upper()[0]) / 2.0)
            })
            .collect()
    }

    /// `tags` tags (and zones) and `fixes` fixes, deterministic for `seed`.
    pub fn new(seed: u64, tags: usize, fixes: usize) -> Result<Self, String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut zones = Vec::with_capacity(tags);
        let mut polygons = Vec::with_capacity(tags);
        let mut centres = Vec::with_capacity(tags);
        for i in 0..tags {
            let centre = (rng.gen_range(52.95..53.45), rng.gen_range(-3.05..-2.05));
            let radius = rng.gen_range(100.0..400.0);
            let ring = octagon(centre, radius);
            let coords: Vec<String> = ring.iter().map(|(x, y)| format!("[{x},{y}]")).collect();
            let geojson = format!(r#"{{"type":"Polygon","coordinates":[[{}]]}}"#, coords.join(","));
            let z = hru_domain::Zone {
                zone_id: uuid::Uuid::from_u128(i as u128 + 1),
                version: 1,
                kind: pb::ZoneKind::Exclusion,
                tag_id: hru_domain::TagId::parse(&format!("tag-{i}"), "tag_id").map_err(|e| e.to_string())?,
                geojson,
                radius_m: 0.0,
                schedule: vec![],
                exit_buffer_m: 20.0,
                label: String::new(),
            };
            if let Ok(zone) = Zone::parse(&z, Some(hru_domain::CaseId(uuid::Uuid::from_u128(i as u128 + 1)))) {
                zones.push(zone);
                polygons.push(geo::Polygon::new(ring.into(), vec![]));
                centres.push(centre);
            }
        }
        let mut inputs = Vec::with_capacity(fixes);
        let t0 = 1_800_000_000_000;
        for n in 0..fixes {
            let i = n % centres.len().max(1);
            let c = centres[i];
            let (dn, de) = (rng.gen_range(-3_000.0..3_000.0), rng.gen_range(-3_000.0..3_000.0));
            let position = (c.0 + dn / M_PER_DEG, c.1 + de / (M_PER_DEG * c.0.to_radians().cos()));
            let at = t0 + (n / centres.len().max(1)) as i64 * 1_000;
            inputs.push(Input::Fixes {
                device: Device::Tag(
                    hru_domain::TagId::parse(&format!("tag-{i}"), "tag_id").map_err(|e| e.to_string())?,
                ),
                fixes: vec![Fix {
                    seq: n as u64,
                    device_ms: at,
                    received_ms: at + 200,
                    position: Some(position),
                    accuracy_m: rng.gen_range(4.0..20.0),
                    battery: 80,
                    tampered: false,
                    batch: uuid::Uuid::nil(),
                }],
            });
        }
        Ok(Self {
            zones,
            polygons,
            inputs,
        })
    }

    /// A state holding every zone.
    pub fn state(&self) -> State {
        let mut state = State::new(Config::default());
        for z in &self.zones {
            state.apply(&Input::Zone(Box::new(z.clone())));
        }
        state
    }
}

struct Indexed {
    bbox: AABB<[f64; 2]>,
    index: usize,
}

impl RTreeObject for Indexed {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.bbox
    }
}

/// Engine fixes/s and raw R-tree + point-in-polygon lookups/s, on one core, same fixes.
pub fn engine_vs_raw(w: &Workload) -> (f64, f64, usize) {
    let mut state = w.state();
    let start = Instant::now();
    let actions = engine_pass(&mut state, &w.inputs);
    let engine = w.inputs.len() as f64 / start.elapsed().as_secs_f64();

    let tree = RTree::bulk_load(
        w.zones
            .iter()
            .enumerate()
            .map(|(index, z)| Indexed { bbox: z.bbox, index })
            .collect(),
    );
    let points: Vec<geo::Point<f64>> = w
        .inputs
        .iter()
        .filter_map(|i| match i {
            Input::Fixes { fixes, .. } => fixes[0].position.map(|(lat, lon)| geo::Point::new(lon, lat)),
            _ => None,
        })
        .collect();
    let start = Instant::now();
    let inside = raw_pass(&tree, &w.polygons, &points);
    let raw = points.len() as f64 / start.elapsed().as_secs_f64();
    std::hint::black_box((actions, inside));
    (engine, raw, actions)
}

/// The timed engine loop (its own function, so an instruction count can be taken of it alone:
/// `valgrind --tool=callgrind --toggle-collect='*engine_pass*' hru bench geofence`).
#[inline(never)]
fn engine_pass(state: &mut State, inputs: &[Input]) -> usize {
    inputs.iter().map(|input| state.apply(input).len()).sum()
}

/// The timed raw loop: an R-tree lookup and point-in-polygon per fix (`--toggle-collect='*raw_pass*'`).
#[inline(never)]
fn raw_pass(tree: &RTree<Indexed>, polygons: &[geo::Polygon<f64>], points: &[geo::Point<f64>]) -> usize {
    let mut inside = 0usize;
    for p in points {
        let at = AABB::from_point([p.x(), p.y()]);
        for hit in tree.locate_in_envelope_intersecting(&at) {
            if polygons[hit.index].contains(p) {
                inside += 1;
            }
        }
    }
    inside
}

/// Resident memory of this process, bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Resident memory a state with `n` zones and `n` tags (one fix each) adds, bytes.
pub fn state_memory(n: usize) -> Result<u64, String> {
    let w = Workload::new(5, n, n)?;
    let before = resident_bytes();
    let mut state = w.state();
    for input in &w.inputs {
        state.apply(input);
    }
    let after = resident_bytes();
    std::hint::black_box(state.tag_count());
    Ok(after.saturating_sub(before))
}
