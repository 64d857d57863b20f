//! Zones as the engine uses them: GeoJSON (RFC 7946) polygons, multipolygons and circles held in
//! local metres around the zone's own origin, weekly windows in Europe/London, and the signed
//! depth of a point (positive inside, negative outside, in metres from the boundary).

use geo::{Coord, LineString, MultiPolygon, Polygon};
use hru_wire::v1 as pb;
use rstar::AABB;

/// Metres per degree of latitude (mean).
const M_PER_DEG: f64 = 111_195.0;

/// A local equirectangular frame: metres east and north of an origin. Over a zone's extent
/// (a few kilometres) the error is well under a metre.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Frame {
    lat0: f64,
    lon0: f64,
    cos_lat0: f64,
}

impl Frame {
    /// A frame centred on `(lat, lon)`.
    pub fn at(lat: f64, lon: f64) -> Self {
        Self {
            lat0: lat,
            lon0: lon,
            cos_lat0: lat.to_radians().cos(),
        }
    }

    /// `(lat, lon)` in this frame, metres (x east, y north).
    pub fn project(&self, lat: f64, lon: f64) -> (f64, f64) {
        (
            (lon - self.lon0) * self.cos_lat0 * M_PER_DEG,
            (lat - self.lat0) * M_PER_DEG,
        )
    }

    /// The position `(lat, lon)` of the point `(x, y)` metres east and north of the origin.
    pub fn unproject(&self, x: f64, y: f64) -> (f64, f64) {
        (self.lat0 + y / M_PER_DEG, self.lon0 + x / (self.cos_lat0 * M_PER_DEG))
    }
}

/// Distance in metres between two positions (equirectangular; exact enough below ~50 km).
pub fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (x, y) = Frame::at(a.0, a.1).project(b.0, b.1);
    x.hypot(y)
}

/// A zone's shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Shape {
    /// Polygons (with holes) in the zone's frame.
    Area {
        /// The frame the polygons are in.
        frame: Frame,
        /// The polygons, metres.
        polygons: MultiPolygon<f64>,
    },
    /// A circle.
    Circle {
        /// Centre `(lat, lon)`.
        centre: (f64, f64),
        /// Radius, metres.
        radius_m: f64,
    },
}

/// A weekly window in Europe/London civil time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Day the window starts.
    pub day: jiff::civil::Weekday,
    /// Start, minutes after local midnight.
    pub start_minute: u32,
    /// Length in civil minutes (the wall clock, so a night across a clock change is an hour
    /// shorter or longer in real time).
    pub duration_minutes: u32,
}

/// A zone, parsed and ready to evaluate.
#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    /// Zone id.
    pub id: uuid::Uuid,
    /// Version.
    pub version: u32,
    /// Case the zone belongs to.
    pub case: Option<crate::CaseId>,
    /// Exclusion (stay out) or inclusion (stay in during the windows: a curfew).
    pub kind: pb::ZoneKind,
    /// The tag it applies to.
    pub tag: crate::TagId,
    /// Geometry.
    pub shape: Shape,
    /// Active windows; empty: always.
    pub windows: Vec<Window>,
    /// How far past the boundary a fix must be for the breach to count as ended.
    pub exit_buffer_m: f64,
    /// Bounding box `[lon, lat]`, degrees.
    pub bbox: AABB<[f64; 2]>,
    /// The definition it was parsed from (what a snapshot keeps to parse it again).
    pub definition: crate::Zone,
}

/// Why a zone definition cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("zone {zone}: {field}: {problem}")]
pub struct ZoneError {
    /// Zone id.
    pub zone: String,
    /// Field at fault.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

fn weekday(d: pb::Weekday) -> Option<jiff::civil::Weekday> {
    use jiff::civil::Weekday as W;
    Some(match d {
        pb::Weekday::Monday => W::Monday,
        pb::Weekday::Tuesday => W::Tuesday,
        pb::Weekday::Wednesday => W::Wednesday,
        pb::Weekday::Thursday => W::Thursday,
        pb::Weekday::Friday => W::Friday,
        pb::Weekday::Saturday => W::Saturday,
        pb::Weekday::Sunday => W::Sunday,
        pb::Weekday::Unspecified => return None,
    })
}

impl Zone {
    /// Parse a validated zone definition of `case`.
    pub fn parse(z: &crate::Zone, case: Option<crate::CaseId>) -> Result<Self, ZoneError> {
        let fail = |field: &'static str, problem: String| ZoneError {
            zone: z.zone_id.to_string(),
            field,
            problem,
        };
        let geojson: geojson::GeoJson = z
            .geojson
            .parse()
            .map_err(|e| fail("geojson", format!("is not GeoJSON: {e}")))?;
        let geometry: geo::Geometry<f64> = match geojson {
            geojson::GeoJson::Geometry(g) => g.try_into(),
            geojson::GeoJson::Feature(f) => f
                .geometry
                .ok_or_else(|| fail("geojson", "the feature has no geometry".into()))?
                .try_into(),
            geojson::GeoJson::FeatureCollection(_) => {
                return Err(fail("geojson", "give one geometry, not a feature collection".into()));
            }
        }
        .map_err(|e| fail("geojson", format!("{e}")))?;
        let (shape, bbox) = match geometry {
            geo::Geometry::Point(p) => {
                if z.radius_m <= 0.0 {
                    return Err(fail("radius_m", "a Point zone is a circle and needs a radius".into()));
                }
                let (lat, lon) = (p.y(), p.x());
                check_position(lat, lon).map_err(|e| fail("geojson", e))?;
                let dlat = z.radius_m / M_PER_DEG;
                let dlon = z.radius_m / (M_PER_DEG * lat.to_radians().cos().max(1e-6));
                (
                    Shape::Circle {
                        centre: (lat, lon),
                        radius_m: z.radius_m,
                    },
                    AABB::from_corners([lon - dlon, lat - dlat], [lon + dlon, lat + dlat]),
                )
            }
            geo::Geometry::Polygon(p) => area(MultiPolygon(vec![p])).map_err(|e| fail("geojson", e))?,
            geo::Geometry::MultiPolygon(mp) => area(mp).map_err(|e| fail("geojson", e))?,
            other => {
                return Err(fail(
                    "geojson",
                    format!(
                        "{} is not a zone: use Polygon, MultiPolygon or Point with radius_m",
                        geometry_name(&other)
                    ),
                ));
            }
        };
        let windows = z
            .schedule
            .iter()
            .map(|w| {
                Ok(Window {
                    day: weekday(w.day).ok_or_else(|| fail("schedule.day", "is not set".into()))?,
                    start_minute: w.start_minute,
                    duration_minutes: w.duration_minutes,
                })
            })
            .collect::<Result<_, ZoneError>>()?;
        if z.kind == pb::ZoneKind::Inclusion && z.schedule.is_empty() {
            return Err(fail(
                "schedule",
                "an inclusion zone needs curfew windows (an always-on inclusion zone is house arrest: give 7 windows)"
                    .into(),
            ));
        }
        Ok(Self {
            id: z.zone_id,
            version: z.version,
            case,
            kind: z.kind,
            tag: z.tag_id.clone(),
            shape,
            windows,
            exit_buffer_m: z.exit_buffer_m,
            bbox,
            definition: z.clone(),
        })
    }

    /// Signed depth of `(lat, lon)`: metres inside the boundary (positive) or outside (negative).
    pub fn depth(&self, lat: f64, lon: f64) -> f64 {
        match &self.shape {
            Shape::Circle { centre, radius_m } => radius_m - distance_m(*centre, (lat, lon)),
            Shape::Area { frame, polygons } => {
                let (x, y) = frame.project(lat, lon);
                signed_distance(polygons, x, y)
            }
        }
    }

    /// Whether the zone is in force at `at_ms` (always, without windows).
    pub fn active_at(&self, at_ms: i64) -> bool {
        self.windows.is_empty() || self.windows.iter().any(|w| w.contains(at_ms))
    }
}

fn geometry_name(g: &geo::Geometry<f64>) -> &'static str {
    match g {
        geo::Geometry::Point(_) => "Point",
        geo::Geometry::Line(_) => "Line",
        geo::Geometry::LineString(_) => "LineString",
        geo::Geometry::Polygon(_) => "Polygon",
        geo::Geometry::MultiPoint(_) => "MultiPoint",
        geo::Geometry::MultiLineString(_) => "MultiLineString",
        geo::Geometry::MultiPolygon(_) => "MultiPolygon",
        geo::Geometry::GeometryCollection(_) => "GeometryCollection",
        geo::Geometry::Rect(_) => "Rect",
        geo::Geometry::Triangle(_) => "Triangle",
    }
}

fn check_position(lat: f64, lon: f64) -> Result<(), String> {
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(format!(
            "position [{lon}, {lat}] is not [longitude, latitude] in degrees (RFC 7946 order)"
        ));
    }
    Ok(())
}

/// Polygons in degrees → the same in a local frame, with their bounding box in degrees.
fn area(mp: MultiPolygon<f64>) -> Result<(Shape, AABB<[f64; 2]>), String> {
    let coords: Vec<Coord<f64>> =
        mp.0.iter()
            .flat_map(|p| {
                p.exterior()
                    .0
                    .iter()
                    .chain(p.interiors().iter().flat_map(|r| r.0.iter()))
            })
            .copied()
            .collect();
    if mp.0.is_empty() || mp.0.iter().any(|p| p.exterior().0.len() < 4) {
        return Err("a polygon needs a closed ring of at least 3 distinct points".into());
    }
    for c in &coords {
        check_position(c.y, c.x)?;
    }
    let (mut min, mut max) = ([f64::MAX; 2], [f64::MIN; 2]);
    for c in &coords {
        min = [min[0].min(c.x), min[1].min(c.y)];
        max = [max[0].max(c.x), max[1].max(c.y)];
    }
    let frame = Frame::at((min[1] + max[1]) / 2.0, (min[0] + max[0]) / 2.0);
    let to_local = |ring: &LineString<f64>| -> LineString<f64> {
        ring.0
            .iter()
            .map(|c| {
                let (x, y) = frame.project(c.y, c.x);
                Coord { x, y }
            })
            .collect()
    };
    let polygons = MultiPolygon(
        mp.0.iter()
            .map(|p| Polygon::new(to_local(p.exterior()), p.interiors().iter().map(to_local).collect()))
            .collect(),
    );
    Ok((Shape::Area { frame, polygons }, AABB::from_corners(min, max)))
}

/// Distance from `(x, y)` to the nearest edge of `polygons`, positive inside, negative outside
/// (even-odd rule over every ring, so holes are outside).
pub fn signed_distance(polygons: &MultiPolygon<f64>, x: f64, y: f64) -> f64 {
    let mut inside = false;
    let mut nearest2 = f64::MAX;
    for p in &polygons.0 {
        for ring in std::iter::once(p.exterior()).chain(p.interiors()) {
            for seg in ring.0.windows(2) {
                let (a, b) = (seg[0], seg[1]);
                if (a.y > y) != (b.y > y) && x < (b.x - a.x) * (y - a.y) / (b.y - a.y) + a.x {
                    inside = !inside;
                }
                nearest2 = nearest2.min(segment_distance2(a, b, x, y));
            }
        }
    }
    let nearest = nearest2.sqrt();
    if inside { nearest } else { -nearest }
}

/// Squared distance from `(x, y)` to the segment `a`–`b`.
fn segment_distance2(a: Coord<f64>, b: Coord<f64>, x: f64, y: f64) -> f64 {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    let len2 = dx * dx + dy * dy;
    let t = if len2 > 0.0 {
        (((x - a.x) * dx + (y - a.y) * dy) / len2).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let (ex, ey) = (x - (a.x + t * dx), y - (a.y + t * dy));
    ex * ex + ey * ey
}

impl Window {
    /// Whether `at_ms` falls in this window in any week. A window starting in a clock-change gap
    /// starts when the clock resumes; one starting in the repeated hour starts at its first
    /// occurrence.
    pub fn contains(&self, at_ms: i64) -> bool {
        let Ok(tz) = jiff::tz::TimeZone::get("Europe/London") else {
            return false;
        };
        let Ok(at) = jiff::Timestamp::from_millisecond(at_ms) else {
            return false;
        };
        let local = at.to_zoned(tz.clone());
        // A window may run up to a week, so it may have started on any of the last 8 days.
        (0..=7).any(|back| {
            let Ok(day) = local.date().checked_sub(jiff::Span::new().days(back)) else {
                return false;
            };
            if day.weekday() != self.day {
                return false;
            }
            let start = day.to_datetime(jiff::civil::Time::midnight())
                + jiff::Span::new().minutes(i64::from(self.start_minute));
            let end = start + jiff::Span::new().minutes(i64::from(self.duration_minutes));
            let (Ok(start), Ok(end)) = (
                tz.to_ambiguous_zoned(start).compatible(),
                tz.to_ambiguous_zoned(end).compatible(),
            ) else {
                return false;
            };
            start.timestamp() <= at && at < end.timestamp()
        })
    }
}
