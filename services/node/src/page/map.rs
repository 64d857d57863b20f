//! The breach map: SVG drawn from the case's own events alone — zones (polygons and circles),
//! the curfew address, the breach's fix with its accuracy circle, the tag's recent trail, the
//! victim's last fresh position for proximity breaches and a scale bar. No tiles, no scripts,
//! nothing fetched: every coordinate comes from what the agreement gave this party.

use std::fmt::Write as _;

use hru_domain::zone::{Frame, Shape};
use hru_domain::{Breach, CaseEvent};
use hru_wire::v1 as pb;

/// Width of the drawing, SVG units (pixels at 1:1).
pub(crate) const WIDTH: f64 = 640.0;
/// Height of the drawing.
pub(crate) const HEIGHT: f64 = 440.0;
/// How far back the trail reaches before the breach's latest fix, ms.
const TRAIL_MS: i64 = 2 * 3600 * 1000;
/// Most trail points drawn (the latest).
const TRAIL_POINTS: usize = 200;
/// Zones within this of the breach are framed with it, metres.
const NEAR_M: f64 = 3_000.0;
/// A victim fix older than this at the breach's latest fix is not fresh, unless the case's
/// proximity rule says otherwise.
const VICTIM_FRESH_DEFAULT_S: i64 = 300;

/// What the map of one breach shows, gathered from its case's events.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MapData {
    /// The breach episode (hex id), its kind and the tag.
    pub(crate) breach_id: String,
    pub(crate) kind: String,
    pub(crate) tag: String,
    /// The breach's latest fix: position, accuracy (m) and device time.
    pub(crate) fix: Option<((f64, f64), f64, i64)>,
    /// The tag's zones in force: (label, exclusion or curfew, shape), the breach's own first.
    pub(crate) zones: Vec<(String, pb::ZoneKind, Shape)>,
    /// How many of `zones` the map must show whole: the breach's own zone, and those near the
    /// fix (others are drawn where they fall in the view).
    pub(crate) framed: usize,
    /// The tag's recent fixes, oldest first: (device time, position).
    pub(crate) trail: Vec<(i64, (f64, f64))>,
    /// The victim's last fresh position and its device time (proximity breaches).
    pub(crate) victim: Option<((f64, f64), i64)>,
}

impl MapData {
    /// The map of breach `id` from its case's events (as this party may read them, in log
    /// order), looked at `now_ms`; `None` when the case holds no such breach.
    pub(crate) fn of(id: uuid::Uuid, events: &[CaseEvent], now_ms: i64) -> Option<Self> {
        let breaches: Vec<&Breach> = events
            .iter()
            .filter_map(|e| match e {
                CaseEvent::TagBreach { core: Some(b) } => Some(b),
                _ => None,
            })
            .collect();
        let latest = breaches
            .iter()
            .filter(|b| b.breach_id == id)
            .max_by_key(|b| b.observed_at_ms)?;
        let tag = latest.tag_id.as_str().to_owned();
        // Zones of this tag in force: the latest definition of each, less those revoked.
        let mut zones: Vec<(uuid::Uuid, &hru_domain::Zone)> = Vec::new();
        let mut max_victim_age_s = VICTIM_FRESH_DEFAULT_S;
        let rule = latest.rule_id;
        for e in events {
            match e {
                CaseEvent::ZoneDefined { core: Some(z) } if z.tag_id.as_str() == tag => {
                    zones.retain(|(zid, old)| *zid != z.zone_id || old.version > z.version);
                    if !zones.iter().any(|(zid, _)| *zid == z.zone_id) {
                        zones.push((z.zone_id, z));
                    }
                }
                CaseEvent::ZoneRevoked { core: Some(r) } => zones.retain(|(zid, _)| *zid != r.zone_id),
                // The freshness of the rule the breach is about (a tag may have several victims).
                CaseEvent::ProximityRuleSet { core: Some(r) } if r.rule_id == rule => {
                    max_victim_age_s = i64::from(r.max_victim_fix_age_s);
                }
                _ => {}
            }
        }
        // The breach's own zone first, then those near where it happened; the rest need not fit.
        let near_of = latest.position.or_else(|| {
            zones
                .iter()
                .find(|(zid, _)| *zid == latest.rule_id)
                .and_then(|(_, z)| hru_domain::zone::Zone::parse(z, None).ok())
                .map(|z| shape_centre(&z.shape))
        });
        let mut zones: Vec<(u8, String, pb::ZoneKind, Shape)> = zones
            .into_iter()
            .filter_map(|(zid, z)| {
                let shape = hru_domain::zone::Zone::parse(z, None).ok()?.shape;
                let rank = if zid == latest.rule_id {
                    0
                } else if near_of.is_some_and(|p| hru_domain::zone::distance_m(p, shape_centre(&shape)) <= NEAR_M) {
                    1
                } else {
                    2
                };
                Some((rank, z.label.clone(), z.kind, shape))
            })
            .collect();
        zones.sort_by_key(|(rank, ..)| *rank);
        let framed = zones.iter().filter(|(rank, ..)| *rank < 2).count();
        let zones = zones
            .into_iter()
            .map(|(_, label, kind, shape)| (label, kind, shape))
            .collect();
        // The trail: every position of this tag the case's breaches carry, near the breach.
        let end = latest.observed_at_ms;
        let mut trail: Vec<(i64, (f64, f64))> = Vec::new();
        let mut add = |at: i64, p: Option<(f64, f64)>| {
            if let Some(p) = p
                && at <= end
                && at >= end - TRAIL_MS
                && p.0.is_finite()
                && p.1.is_finite()
            {
                trail.push((at, p));
            }
        };
        for b in breaches.iter().filter(|b| b.tag_id.as_str() == tag) {
            add(b.observed_at_ms, b.position);
            if let Some(ev) = &b.evidence {
                for f in [&ev.tag_last_fix, &tag_fix(ev)].into_iter().flatten() {
                    add(f.device_time_ms, f.position.as_ref().map(|p| (p.lat, p.lon)));
                }
            }
        }
        trail.sort_by_key(|(at, _)| *at);
        trail.dedup_by_key(|(at, _)| *at);
        let skip = trail.len().saturating_sub(TRAIL_POINTS);
        let trail = trail.split_off(skip);
        // The victim's position, when the breach is about the victim and the fix is fresh.
        let proximity = matches!(
            latest.kind,
            pb::BreachKind::Proximity | pb::BreachKind::ProximityWarning
        );
        let victim = latest
            .evidence
            .as_ref()
            .filter(|_| proximity)
            .and_then(|ev| victim_fix(ev).or(ev.victim_last_fix.as_ref()))
            .and_then(|f| Some(((f.position.as_ref()?.lat, f.position.as_ref()?.lon), f.device_time_ms)))
            .filter(|(_, at)| {
                // Fresh beside the breach's fix, and still fresh now: an old breach's map does not
                // show where the victim was.
                let limit = max_victim_age_s * 1000;
                (end - at).abs() <= limit && now_ms - at <= limit
            });
        Some(Self {
            breach_id: hex::encode(id.as_bytes()),
            kind: latest.kind.as_str_name().to_owned(),
            tag,
            fix: latest.position.map(|p| (p, latest.accuracy_m, latest.observed_at_ms)),
            zones,
            framed,
            trail,
            victim,
        })
    }

    /// The map as an SVG document.
    pub(crate) fn svg(&self) -> String {
        let origin = self
            .fix
            .map(|(p, ..)| p)
            .or_else(|| self.trail.last().map(|(_, p)| *p))
            .or_else(|| self.zones.first().map(|(_, _, s)| shape_centre(s)));
        let mut out = format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" id="breach-map" data-breach="{}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="map of breach {}">"#,
            self.breach_id, self.breach_id
        );
        let _ = write!(
            out,
            r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#f4f1ea" stroke="#999"/>"##
        );
        let Some(origin) = origin else {
            let _ = write!(
                out,
                r##"<text x="20" y="40" fill="#333" font-size="14">No position and no zone to draw for this breach.</text></svg>"##
            );
            return out;
        };
        let view = View::fit(origin, &self.points_to_fit());
        // Zones first, beneath everything.
        for (label, kind, shape) in &self.zones {
            let (class, fill, stroke, name) = if *kind == pb::ZoneKind::Inclusion {
                ("zone curfew", "#2f6fb0", "#1d4f85", format!("curfew address: {label}"))
            } else {
                (
                    "zone exclusion",
                    "#c0392b",
                    "#922b21",
                    format!("exclusion zone: {label}"),
                )
            };
            let anchor = match shape {
                Shape::Circle { centre, radius_m } => {
                    let (x, y) = view.xy(*centre);
                    let r = radius_m * view.scale;
                    let _ = write!(
                        out,
                        r#"<circle class="{class}" cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="{fill}" fill-opacity="0.18" stroke="{stroke}" stroke-width="2"/>"#
                    );
                    (x, y - r)
                }
                Shape::Area { frame, polygons } => {
                    let mut d = String::new();
                    let mut top = (f64::MAX, f64::MAX);
                    for polygon in polygons {
                        for ring in std::iter::once(polygon.exterior()).chain(polygon.interiors()) {
                            for (i, c) in ring.coords().enumerate() {
                                let (x, y) = view.xy(frame.unproject(c.x, c.y));
                                if y < top.1 {
                                    top = (x, y);
                                }
                                let _ = write!(d, "{}{x:.1} {y:.1} ", if i == 0 { "M" } else { "L" });
                            }
                            d.push_str("Z ");
                        }
                    }
                    let _ = write!(
                        out,
                        r#"<path class="{class}" d="{}" fill-rule="evenodd" fill="{fill}" fill-opacity="0.18" stroke="{stroke}" stroke-width="2"/>"#,
                        d.trim_end()
                    );
                    top
                }
            };
            // A zone off the drawing (one not framed, far away) gets no label or marker.
            let inside = |(x, y): (f64, f64)| (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT - 40.0).contains(&y);
            if !inside(anchor) && !inside(view.xy(shape_centre(shape))) {
                continue;
            }
            if *kind == pb::ZoneKind::Inclusion {
                let (x, y) = view.xy(shape_centre(shape));
                let _ = write!(
                    out,
                    r##"<g class="curfew-address"><rect x="{:.1}" y="{:.1}" width="12" height="10" fill="#1d4f85"/><path d="M{:.1} {:.1} L{x:.1} {:.1} L{:.1} {:.1} Z" fill="#1d4f85"/></g>"##,
                    x - 6.0,
                    y - 4.0,
                    x - 8.0,
                    y - 4.0,
                    y - 12.0,
                    x + 8.0,
                    y - 4.0
                );
            }
            // Labels stay inside the drawing: anchored at whichever end keeps them in.
            let (x, align) = if anchor.0 < 150.0 {
                (anchor.0.max(4.0), "start")
            } else if anchor.0 > WIDTH - 150.0 {
                (anchor.0.min(WIDTH - 4.0), "end")
            } else {
                (anchor.0, "middle")
            };
            let _ = write!(
                out,
                r##"<text x="{x:.1}" y="{:.1}" fill="{stroke}" font-size="12" text-anchor="{align}">{}</text>"##,
                (anchor.1 - 6.0).clamp(14.0, HEIGHT - 48.0),
                escape(&name)
            );
        }
        // The trail, oldest to newest.
        if self.trail.len() > 1 {
            let points: Vec<String> = self
                .trail
                .iter()
                .map(|(_, p)| {
                    let (x, y) = view.xy(*p);
                    format!("{x:.1},{y:.1}")
                })
                .collect();
            let _ = write!(
                out,
                r##"<polyline id="trail" points="{}" fill="none" stroke="#555" stroke-width="1.5" stroke-dasharray="4 3"/>"##,
                points.join(" ")
            );
        }
        for (_, p) in &self.trail {
            let (x, y) = view.xy(*p);
            let _ = write!(
                out,
                r##"<circle class="trail-fix" cx="{x:.1}" cy="{y:.1}" r="2.5" fill="#555"/>"##
            );
        }
        if let Some((p, at)) = self.victim {
            let (x, y) = view.xy(p);
            let _ = write!(
                out,
                r##"<g id="victim-marker"><circle cx="{x:.1}" cy="{y:.1}" r="7" fill="#27ae60" stroke="#fff" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#1e8449" font-size="12" text-anchor="{}">victim (fix {})</text></g>"##,
                beside(x).0,
                y + 4.0,
                beside(x).1,
                clock(at)
            );
        }
        match self.fix {
            Some((p, accuracy, at)) => {
                let (x, y) = view.xy(p);
                let r = (accuracy * view.scale).max(1.0);
                let _ = write!(
                    out,
                    r##"<g id="breach-marker" data-breach="{}"><circle class="accuracy" cx="{x:.1}" cy="{y:.1}" r="{r:.1}" fill="#e67e22" fill-opacity="0.25" stroke="#d35400"/><circle class="fix" cx="{x:.1}" cy="{y:.1}" r="6" fill="#d35400" stroke="#fff" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#a04000" font-size="12" text-anchor="{}">{} {} at {} (±{accuracy:.0} m)</text></g>"##,
                    self.breach_id,
                    beside(x).0,
                    y - 8.0,
                    beside(x).1,
                    escape(&self.tag),
                    escape(&kind_label(&self.kind)),
                    clock(at)
                );
            }
            None => {
                let _ = write!(
                    out,
                    r##"<text id="breach-marker" data-breach="{}" x="20" y="{:.1}" fill="#a04000" font-size="13">{}: this breach carries no position</text>"##,
                    self.breach_id,
                    HEIGHT - 40.0,
                    escape(&kind_label(&self.kind))
                );
            }
        }
        out.push_str(&view.scale_bar());
        out.push_str(r##"<g class="north"><path d="M612 44 L620 20 L628 44 L620 38 Z" fill="#333"/><text x="620" y="58" fill="#333" font-size="12" text-anchor="middle">N</text></g>"##);
        out.push_str("</svg>");
        out
    }

    /// Every point the map must show, in `(lat, lon)`.
    fn points_to_fit(&self) -> Vec<((f64, f64), f64)> {
        let mut points: Vec<((f64, f64), f64)> = Vec::new();
        if let Some((p, accuracy, _)) = self.fix {
            points.push((p, accuracy));
        }
        // The trail near the breach: a tag that travelled far does not shrink the breach to a dot.
        let near = |p: &(f64, f64)| {
            self.fix
                .is_none_or(|(f, ..)| hru_domain::zone::distance_m(f, *p) <= NEAR_M)
        };
        points.extend(self.trail.iter().filter(|(_, p)| near(p)).map(|(_, p)| (*p, 0.0)));
        if let Some((p, _)) = self.victim {
            points.push((p, 0.0));
        }
        for (_, _, shape) in self.zones.iter().take(self.framed) {
            match shape {
                Shape::Circle { centre, radius_m } => points.push((*centre, *radius_m)),
                Shape::Area { frame, polygons } => {
                    for polygon in polygons {
                        points.extend(polygon.exterior().coords().map(|c| (frame.unproject(c.x, c.y), 0.0)));
                    }
                }
            }
        }
        points
    }
}

fn tag_fix(ev: &pb::BreachEvidence) -> Option<pb::EvidenceFix> {
    match &ev.cause {
        Some(pb::breach_evidence::Cause::TagFix(f)) => Some(f.clone()),
        _ => None,
    }
}

fn victim_fix(ev: &pb::BreachEvidence) -> Option<&pb::EvidenceFix> {
    match &ev.cause {
        Some(pb::breach_evidence::Cause::VictimFix(f)) => Some(f),
        _ => None,
    }
}

/// Where a marker's label goes beside a marker at `x`: to its right, or to its left near the
/// right edge; and its text anchor.
fn beside(x: f64) -> (f64, &'static str) {
    if x > WIDTH - 260.0 {
        (x - 10.0, "end")
    } else {
        (x + 10.0, "start")
    }
}

/// A zone's centre, `(lat, lon)`.
fn shape_centre(shape: &Shape) -> (f64, f64) {
    match shape {
        Shape::Circle { centre, .. } => *centre,
        Shape::Area { frame, polygons } => {
            use geo::Centroid as _;
            let c = polygons.centroid().map_or((0.0, 0.0), |c| (c.x(), c.y()));
            frame.unproject(c.0, c.1)
        }
    }
}

/// A breach kind in words.
pub(crate) fn kind_label(kind: &str) -> String {
    kind.trim_start_matches("BREACH_KIND_").replace('_', " ").to_lowercase()
}

/// `HH:MM:SS` UTC of a Unix ms time.
fn clock(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map_or_else(|_| "?".into(), |t| t.strftime("%H:%M:%S UTC").to_string())
}

/// Text safe inside SVG/XML.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Metres in a local frame around the map's origin, scaled to the drawing (north up).
struct View {
    frame: Frame,
    /// SVG units per metre.
    scale: f64,
    /// The drawing's centre, metres east and north of the origin.
    centre: (f64, f64),
}

impl View {
    /// A view showing every point (each with a radius, metres), with a margin; at least 200 m
    /// across.
    fn fit(origin: (f64, f64), points: &[((f64, f64), f64)]) -> Self {
        let frame = Frame::at(origin.0, origin.1);
        let (mut min, mut max) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
        for (p, r) in points {
            let (x, y) = frame.project(p.0, p.1);
            if !(x.is_finite() && y.is_finite()) {
                continue;
            }
            min = (min.0.min(x - r), min.1.min(y - r));
            max = (max.0.max(x + r), max.1.max(y + r));
        }
        let span = ((max.0 - min.0).max(200.0) * 1.2, (max.1 - min.1).max(200.0) * 1.2);
        let scale = (WIDTH / span.0).min((HEIGHT - 40.0) / span.1);
        Self {
            frame,
            scale,
            centre: ((min.0 + max.0) / 2.0, (min.1 + max.1) / 2.0),
        }
    }

    /// Drawing coordinates of `(lat, lon)`.
    fn xy(&self, p: (f64, f64)) -> (f64, f64) {
        let (x, y) = self.frame.project(p.0, p.1);
        (
            WIDTH / 2.0 + (x - self.centre.0) * self.scale,
            (HEIGHT - 40.0) / 2.0 - (y - self.centre.1) * self.scale,
        )
    }

    /// A scale bar of a round length near a quarter of the width, bottom left.
    fn scale_bar(&self) -> String {
        let target = WIDTH / 4.0 / self.scale;
        let magnitude = 10f64.powf(target.log10().floor());
        let length = [1.0, 2.0, 5.0, 10.0]
            .into_iter()
            .map(|m| m * magnitude)
            .rfind(|l| *l <= target)
            .unwrap_or(magnitude);
        let px = length * self.scale;
        let label = if length >= 1000.0 {
            format!("{} km", length / 1000.0)
        } else {
            format!("{length} m")
        };
        let y = HEIGHT - 16.0;
        format!(
            r##"<g id="scale-bar" data-metres="{length}"><path d="M20 {:.1} L20 {y:.1} L{:.1} {y:.1} L{:.1} {:.1}" fill="none" stroke="#222" stroke-width="2"/><text x="{:.1}" y="{:.1}" fill="#222" font-size="12">{label}</text></g>"##,
            y - 6.0,
            20.0 + px,
            20.0 + px,
            y - 6.0,
            28.0 + px,
            y + 4.0
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const HOME: (f64, f64) = (53.1905, -2.8910);

    fn zone(id: u128, version: u32, kind: pb::ZoneKind, geojson: &str, radius_m: f64, label: &str) -> CaseEvent {
        CaseEvent::ZoneDefined {
            core: Some(hru_domain::Zone {
                zone_id: uuid::Uuid::from_u128(id),
                version,
                kind,
                tag_id: "tag-1".parse().unwrap(),
                geojson: geojson.into(),
                radius_m,
                // A curfew is an inclusion zone with its nightly windows.
                schedule: if kind == pb::ZoneKind::Inclusion {
                    vec![hru_domain::WeeklyWindow {
                        day: pb::Weekday::Monday,
                        start_minute: 19 * 60,
                        duration_minutes: 12 * 60,
                    }]
                } else {
                    Vec::new()
                },
                exit_buffer_m: 10.0,
                label: label.into(),
            }),
        }
    }

    fn fix(at: i64, p: (f64, f64)) -> pb::EvidenceFix {
        pb::EvidenceFix {
            device_time_ms: at,
            position: Some(pb::LatLon { lat: p.0, lon: p.1 }),
            ..Default::default()
        }
    }

    fn breach(id: u128, kind: pb::BreachKind, at: i64, p: (f64, f64), evidence: pb::BreachEvidence) -> CaseEvent {
        CaseEvent::TagBreach {
            core: Some(Breach {
                breach_id: uuid::Uuid::from_u128(id),
                tag_id: "tag-1".parse().unwrap(),
                kind,
                state: pb::BreachState::Opened,
                rule_id: uuid::Uuid::from_u128(5),
                opened_at_ms: at,
                observed_at_ms: at,
                position: Some(p),
                accuracy_m: 12.0,
                distance_m: 40.0,
                late: false,
                evidence: Some(Box::new(evidence)),
            }),
        }
    }

    fn circle(p: (f64, f64)) -> String {
        format!(r#"{{"type":"Point","coordinates":[{},{}]}}"#, p.1, p.0)
    }

    #[test]
    fn a_map_draws_the_tags_zones_in_force_its_trail_the_fix_and_a_scale_bar() {
        let square = r#"{"type":"Polygon","coordinates":[[[-2.90,53.18],[-2.88,53.18],[-2.88,53.19],[-2.90,53.19],[-2.90,53.18]]]}"#;
        let t = 1_800_000_000_000;
        let events = vec![
            zone(1, 1, pb::ZoneKind::Exclusion, &circle(HOME), 300.0, "old home"),
            zone(1, 2, pb::ZoneKind::Exclusion, &circle(HOME), 500.0, "victim <home>"),
            zone(2, 1, pb::ZoneKind::Inclusion, square, 0.0, "subject's address"),
            zone(3, 1, pb::ZoneKind::Exclusion, &circle((53.3, -2.5)), 100.0, "revoked"),
            CaseEvent::ZoneRevoked {
                core: Some(hru_domain::ZoneRevocation {
                    zone_id: uuid::Uuid::from_u128(3),
                    reason: "order varied".into(),
                }),
            },
            breach(
                9,
                pb::BreachKind::Exclusion,
                t,
                (53.1910, -2.8915),
                pb::BreachEvidence {
                    tag_last_fix: Some(fix(t - 60_000, (53.1950, -2.8990))),
                    cause: Some(pb::breach_evidence::Cause::TagFix(fix(t, (53.1910, -2.8915)))),
                    ..Default::default()
                },
            ),
        ];
        let mut events = events;
        // The subject's curfew address 30 km away is on the map's list but does not shrink it.
        events.insert(
            0,
            zone(4, 1, pb::ZoneKind::Inclusion, &circle((53.0979, -2.4416)), 50.0, "far"),
        );
        let map = MapData::of(uuid::Uuid::from_u128(9), &events, t).unwrap();
        assert_eq!(
            map.zones.len(),
            3,
            "the revoked zone is gone and the old version replaced"
        );
        assert_eq!(map.framed, 2, "the far zone is not framed");
        assert_eq!(map.zones[2].0, "far");
        assert!(
            !map.svg().contains("curfew address: far"),
            "a zone off the drawing is not labelled"
        );
        let fitted = View::fit(map.fix.unwrap().0, &map.points_to_fit());
        assert!(
            WIDTH / fitted.scale < 5_000.0,
            "the view is {} m across",
            WIDTH / fitted.scale
        );
        assert!(
            map.zones
                .iter()
                .any(|z| matches!(z.2, Shape::Circle { radius_m, .. } if radius_m == 500.0)),
            "the zone's latest version"
        );
        assert_eq!(map.trail.len(), 2, "the fix before and the fix itself: {:?}", map.trail);
        assert_eq!(map.victim, None, "an exclusion breach shows no victim");
        let svg = map.svg();
        assert!(svg.contains(r#"id="breach-marker" data-breach="00000000000000000000000000000009""#));
        assert!(svg.contains(r#"class="accuracy""#));
        assert!(svg.contains(r#"class="zone exclusion""#) && svg.contains(r#"class="zone curfew""#));
        assert!(svg.contains("curfew-address"));
        assert!(svg.contains("victim &lt;home&gt;"), "labels are escaped");
        assert!(!svg.contains("revoked"));
        assert!(svg.contains(r#"id="trail""#));
        assert!(svg.contains(r#"id="scale-bar""#));
        assert!(
            !svg.replace("http://www.w3.org/2000/svg", "").contains("http"),
            "nothing to fetch"
        );
        // Everything drawn lies inside the drawing.
        let map_view = View::fit(map.fix.unwrap().0, &map.points_to_fit());
        for (p, _) in map.points_to_fit() {
            let (x, y) = map_view.xy(p);
            assert!(
                (0.0..=WIDTH).contains(&x) && (0.0..=HEIGHT).contains(&y),
                "{p:?} drawn at {x},{y}"
            );
        }
    }

    #[test]
    fn a_proximity_map_shows_the_victim_only_while_the_victims_fix_is_fresh() {
        let t = 1_800_000_000_000;
        let rule = |age: u32| CaseEvent::ProximityRuleSet {
            core: Some(hru_domain::ProximityRule {
                rule_id: uuid::Uuid::from_u128(5),
                tag_id: "tag-1".parse().unwrap(),
                victim_device_id: "vd-1".parse().unwrap(),
                warning_m: 1500.0,
                breach_m: 250.0,
                max_victim_fix_age_s: age,
            }),
        };
        let proximity = |victim_at: i64| {
            breach(
                7,
                pb::BreachKind::Proximity,
                t,
                HOME,
                pb::BreachEvidence {
                    victim_last_fix: Some(fix(victim_at, (53.1920, -2.8900))),
                    ..Default::default()
                },
            )
        };
        let id = uuid::Uuid::from_u128(7);
        // Looked at an hour later, the victim's fix of then is not shown: it is not where she is.
        let later = MapData::of(id, &[rule(300), proximity(t - 120_000)], t + 3_600_000).unwrap();
        assert_eq!(later.victim, None, "a victim's fix an hour old is not shown");
        let fresh = MapData::of(id, &[rule(300), proximity(t - 120_000)], t).unwrap();
        assert_eq!(fresh.victim, Some(((53.1920, -2.8900), t - 120_000)));
        assert!(fresh.svg().contains(r#"id="victim-marker""#));
        let stale = MapData::of(id, &[rule(60), proximity(t - 120_000)], t).unwrap();
        assert_eq!(stale.victim, None, "older than the rule's freshness");
        assert!(!stale.svg().contains("victim-marker"));
        assert!(MapData::of(uuid::Uuid::from_u128(8), &[proximity(t)], t).is_none());
    }

    #[test]
    fn the_scale_bar_is_a_round_length_true_to_the_drawing() {
        for span in [150.0, 900.0, 4_000.0, 30_000.0] {
            let view = View::fit(HOME, &[(HOME, span / 2.0)]);
            let bar = view.scale_bar();
            let metres: f64 = bar
                .split("data-metres=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|m| m.parse().ok())
                .unwrap();
            let mantissa = metres / 10f64.powf(metres.log10().floor());
            assert!([1.0, 2.0, 5.0].iter().any(|m| (m - mantissa).abs() < 1e-9), "{metres}");
            let px = metres * view.scale;
            assert!(px > WIDTH / 10.0 && px <= WIDTH / 4.0 + 1e-6, "{metres} m is {px} px");
        }
        // A point a kilometre east is drawn a kilometre's worth of scale away.
        let view = View::fit(HOME, &[(HOME, 2_000.0)]);
        let east = Frame::at(HOME.0, HOME.1).unproject(1_000.0, 0.0);
        let (a, b) = (view.xy(HOME), view.xy(east));
        assert!(((b.0 - a.0) - 1_000.0 * view.scale).abs() < 0.01);
        assert!((b.1 - a.1).abs() < 0.01);
    }
}
