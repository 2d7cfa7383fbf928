//! Is a school inside a CAP area? Point in polygon (ray casting on
//! latitude/longitude, fine at the scale of a warning polygon) and point in
//! circle (haversine distance). Two functions did not justify the `geo` crate.

use super::{Area, Circle};

/// Mean Earth radius, km.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// Ray casting over `(lat, lon)` vertices. Points on an edge may fall either
/// way; warning polygons are drawn with a margin, so that is acceptable.
pub fn in_polygon(point: (f64, f64), ring: &[(f64, f64)]) -> bool {
    let (y, x) = point;
    let mut inside = false;
    let n = ring.len();
    if n < 3 {
        return false;
    }
    let mut j = n - 1;
    for i in 0..n {
        let (yi, xi) = ring[i];
        let (yj, xj) = ring[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Great-circle distance between two `(lat, lon)` points, in km.
pub fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (lat1, lon1) = (a.0.to_radians(), a.1.to_radians());
    let (lat2, lon2) = (b.0.to_radians(), b.1.to_radians());
    let h = ((lat2 - lat1) / 2.0).sin().powi(2)
        + lat1.cos() * lat2.cos() * ((lon2 - lon1) / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * h.sqrt().asin()
}

pub fn in_circle(point: (f64, f64), c: &Circle) -> bool {
    distance_km(point, (c.lat, c.lon)) <= c.radius_km
}

/// Inside any polygon or circle of the area.
pub fn in_area(point: (f64, f64), area: &Area) -> bool {
    area.polygons.iter().any(|p| in_polygon(point, p))
        || area.circles.iter().any(|c| in_circle(point, c))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The polygon of NWS Severe Thunderstorm Warning LSX 2012-03-15 (Jersey
    /// County, IL), from `../shared/data/cap/nws/cap11/`.
    fn il_warning() -> Vec<(f64, f64)> {
        crate::cap::parse::polygon(
            "polygon",
            "39.12,-90.69 39.10,-90.60 39.07,-90.58 39.05,-90.59 39.02,-90.57 38.90,-90.63 38.94,-90.67 38.93,-90.70 38.99,-90.83 39.13,-90.74 39.12,-90.69",
        )
        .unwrap()
        .unwrap()
    }

    #[test]
    fn points_inside_and_outside_a_real_nws_polygon() {
        let ring = il_warning();
        // Jerseyville, IL lies inside the warned area.
        assert!(in_polygon((39.02, -90.66), &ring));
        // Grafton, IL (south, on the river) is outside it.
        assert!(!in_polygon((38.97, -90.43), &ring));
        // Carrollton, IL (north) is outside it.
        assert!(!in_polygon((39.30, -90.41), &ring));
    }

    #[test]
    fn haversine_matches_a_known_distance() {
        // Brawley to El Centro, CA: about 21 km.
        let d = distance_km((32.9787, -115.5303), (32.7920, -115.5631));
        assert!((d - 20.9).abs() < 1.0, "{d}");
        let c = Circle {
            lat: 32.9525,
            lon: -115.5527,
            radius_km: 5.0,
        };
        assert!(in_circle((32.9787, -115.5303), &c));
        assert!(!in_circle((32.7920, -115.5631), &c));
    }
}
