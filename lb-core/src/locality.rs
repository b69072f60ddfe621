//! Where an endpoint runs: its *locality*, as gRPC and Envoy name it (region, zone,
//! sub-zone), and its *priority*: what the tree policies hand endpoints to their
//! children by.
//!
//! A locality is written as its parts joined by `/`, the broadest first, with as many
//! parts as are known: `zone-a`, `us-east/zone-a`, `us-east/zone-a/rack-1`. One part is
//! a zone, two a region and a zone, three a region, a zone and a sub-zone. That text is
//! also its [`name`](Locality::name), which a `weighted_target_experimental` target is
//! named after:
//!
//! ```
//! use lb_core::locality::Locality;
//!
//! let a: Locality = "zone-a".parse().unwrap();
//! assert_eq!((a.region(), a.zone(), a.sub_zone()), ("", "zone-a", ""));
//! let b: Locality = "us-east/zone-b/rack-1".parse().unwrap();
//! assert_eq!(b.name(), "us-east/zone-b/rack-1");
//! assert!("us east".parse::<Locality>().is_err());
//! ```
//!
//! The ground floor. May import: nothing of this crate.

use std::{fmt, str::FromStr};

/// The longest locality text accepted, in bytes.
pub const MAX_LOCALITY_LEN: usize = 255;

/// The lowest priority an endpoint may have (0 is the highest).
pub const MAX_PRIORITY: u32 = 99;

/// An endpoint's locality: region, zone and sub-zone, any of them empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Locality {
    region: String,
    zone: String,
    sub_zone: String,
    name: String,
}

impl Locality {
    /// The locality with these parts (each may be empty); an error names a part that
    /// is not made of letters, digits, `-`, `_` and `.`.
    pub fn new(region: &str, zone: &str, sub_zone: &str) -> Result<Self, String> {
        for (what, part) in [("region", region), ("zone", zone), ("sub-zone", sub_zone)] {
            if !part
                .chars()
                .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                return Err(format!(
                    "{what} `{part}` may hold only letters, digits, `-`, `_` and `.`"
                ));
            }
        }
        let name = match (region.is_empty(), sub_zone.is_empty()) {
            (true, true) => zone.to_string(),
            (false, true) => format!("{region}/{zone}"),
            (_, false) => format!("{region}/{zone}/{sub_zone}"),
        };
        if name.len() > MAX_LOCALITY_LEN {
            return Err(format!("longer than {MAX_LOCALITY_LEN} bytes"));
        }
        Ok(Self {
            region: region.to_string(),
            zone: zone.to_string(),
            sub_zone: sub_zone.to_string(),
            name,
        })
    }

    /// The region (`us-east`), or `""`.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The zone (`zone-a`), or `""`.
    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// The sub-zone (`rack-1`), or `""`.
    pub fn sub_zone(&self) -> &str {
        &self.sub_zone
    }

    /// The locality as written: `zone-a`, `us-east/zone-a`, `us-east/zone-a/rack-1`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl FromStr for Locality {
    type Err = String;

    /// `zone`, `region/zone` or `region/zone/sub_zone`.
    fn from_str(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        let locality = match parts.as_slice() {
            [""] => return Err("an empty locality (write e.g. @zone-a)".into()),
            [zone] => Self::new("", zone, ""),
            [region, zone] => Self::new(region, zone, ""),
            [region, zone, sub_zone] => Self::new(region, zone, sub_zone),
            _ => {
                return Err(format!(
                    "`{text}` has more than three parts: write zone, region/zone or region/zone/sub_zone"
                ));
            }
        };
        locality.map_err(|e| format!("locality `{text}`: {e}"))
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_read_from_the_broadest() {
        let l: Locality = "us-east/zone-a".parse().unwrap();
        assert_eq!(
            (l.region(), l.zone(), l.sub_zone()),
            ("us-east", "zone-a", "")
        );
        assert_eq!(l.to_string(), "us-east/zone-a");
        let l = Locality::new("r", "", "s").unwrap();
        assert_eq!(
            l.name(),
            "r//s",
            "an empty zone between two parts stays a part"
        );
        assert!(
            "a/b/c/d"
                .parse::<Locality>()
                .unwrap_err()
                .contains("more than three")
        );
        assert!("".parse::<Locality>().unwrap_err().contains("empty"));
        assert!(
            "zone a"
                .parse::<Locality>()
                .unwrap_err()
                .contains("zone `zone a`")
        );
    }
}
