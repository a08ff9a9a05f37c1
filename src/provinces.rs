//! Vietnam's provincial code tables: the 63 units in use until 30 June 2025 and the 34 that
//! absorbed them from 1 July 2025 (Resolution 202/2025/QH15).
//!
//! The data ships inside the binary (`data/provinces.csv`) so tiendo never reads files it
//! does not own at run time. Codes overlap between the tables ("15" is Yên Bái before the
//! merger and Lào Cai after), so a code is always paired with its [`Scheme`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use serde::Serialize;

use crate::clock::vn_offset;

const TABLE: &str = include_str!("../data/provinces.csv");

/// The code table a code belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Scheme {
    /// 63 units, until 30 June 2025.
    Legacy63,
    /// 34 units, from 1 July 2025.
    Current34,
}

impl Scheme {
    /// One letter used in Redis field names: short, because it is stored once per counter.
    pub fn tag(self) -> char {
        match self {
            Scheme::Legacy63 => 'o',
            Scheme::Current34 => 'n',
        }
    }

    pub fn from_tag(tag: char) -> Option<Scheme> {
        match tag {
            'o' => Some(Scheme::Legacy63),
            'n' => Some(Scheme::Current34),
            _ => None,
        }
    }

    /// The table in force at `at`: the switch-over was midnight 1 July 2025, Vietnam time.
    pub fn in_force_at(at: DateTime<Utc>) -> Scheme {
        if at < switch_over() {
            Scheme::Legacy63
        } else {
            Scheme::Current34
        }
    }
}

/// Midnight 1 July 2025 in Vietnam (UTC+7).
pub fn switch_over() -> DateTime<Utc> {
    let day = NaiveDate::from_ymd_opt(2025, 7, 1).expect("valid date");
    vn_offset()
        .from_local_datetime(&day.and_hms_opt(0, 0, 0).expect("valid time"))
        .single()
        .expect("fixed offset is unambiguous")
        .with_timezone(&Utc)
}

/// Which unit table figures are read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
pub enum View {
    /// The 34 units in force since 1 July 2025.
    #[value(name = "34")]
    #[serde(rename = "34")]
    Current34,
    /// The 63 units of before; events reported with 34-unit codes get rows of their own.
    #[value(name = "63")]
    #[serde(rename = "63")]
    Legacy63,
}

impl View {
    /// The code table of this view.
    pub fn scheme(self) -> Scheme {
        match self {
            View::Current34 => Scheme::Current34,
            View::Legacy63 => Scheme::Legacy63,
        }
    }

    /// "34" or "63": how the view is named in settings, alert keys and the API.
    pub fn tag(self) -> &'static str {
        match self {
            View::Current34 => "34",
            View::Legacy63 => "63",
        }
    }
}

impl From<Scheme> for View {
    /// The view whose rows a unit of this table has.
    fn from(scheme: Scheme) -> View {
        match scheme {
            Scheme::Current34 => View::Current34,
            Scheme::Legacy63 => View::Legacy63,
        }
    }
}

/// A provincial unit as reported: a code and the table it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Unit {
    pub scheme: Scheme,
    pub code: u8,
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:02}", self.scheme.tag(), self.code)
    }
}

impl Unit {
    /// Parses the form written by `Display` (`o15`, `n01`).
    pub fn parse_tagged(s: &str) -> Option<Unit> {
        let mut chars = s.chars();
        let scheme = Scheme::from_tag(chars.next()?)?;
        let code = chars.as_str().parse().ok()?;
        provinces().get(scheme, code).map(|_| Unit { scheme, code })
    }

    /// The 34-unit code this unit counts toward.
    pub fn current_code(self) -> u8 {
        match self.scheme {
            Scheme::Current34 => self.code,
            Scheme::Legacy63 => provinces().legacy[&self.code].current_code,
        }
    }
}

/// One row of a code table.
#[derive(Debug, Clone, Serialize)]
pub struct Province {
    /// Two-digit code, as a string with its leading zero.
    pub code: String,
    pub name_vi: String,
    pub name_ascii: String,
    /// For a legacy unit, the 34-unit code that absorbed it; for a current unit, its own code.
    #[serde(skip)]
    pub current_code: u8,
}

/// Both code tables.
#[derive(Debug)]
pub struct Provinces {
    legacy: BTreeMap<u8, Province>,
    current: BTreeMap<u8, Province>,
}

/// The tables, parsed once from the embedded CSV.
pub fn provinces() -> &'static Provinces {
    static TABLES: OnceLock<Provinces> = OnceLock::new();
    TABLES.get_or_init(|| Provinces::parse(TABLE).expect("embedded provinces.csv is valid"))
}

impl Provinces {
    fn parse(csv_text: &str) -> Result<Provinces, String> {
        let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
        let mut legacy = BTreeMap::new();
        let mut current = BTreeMap::new();
        for row in reader.records() {
            let row = row.map_err(|e| e.to_string())?;
            let field = |i: usize| row.get(i).unwrap_or_default().to_string();
            let old: u8 = field(0)
                .parse()
                .map_err(|_| format!("bad code {}", field(0)))?;
            let new: u8 = field(3)
                .parse()
                .map_err(|_| format!("bad code {}", field(3)))?;
            legacy.insert(
                old,
                Province {
                    code: field(0),
                    name_vi: field(1),
                    name_ascii: field(2),
                    current_code: new,
                },
            );
            current.entry(new).or_insert_with(|| Province {
                code: field(3),
                name_vi: field(4),
                name_ascii: field(5),
                current_code: new,
            });
        }
        Ok(Provinces { legacy, current })
    }

    pub fn get(&self, scheme: Scheme, code: u8) -> Option<&Province> {
        match scheme {
            Scheme::Legacy63 => self.legacy.get(&code),
            Scheme::Current34 => self.current.get(&code),
        }
    }

    /// Resolves a two-digit code string in `scheme`; `None` for anything not in the table.
    pub fn resolve(&self, scheme: Scheme, code: &str) -> Option<Unit> {
        if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let code: u8 = code.parse().ok()?;
        self.get(scheme, code).map(|_| Unit { scheme, code })
    }

    /// Every unit of one table, in code order.
    pub fn units(&self, scheme: Scheme) -> impl Iterator<Item = (Unit, &Province)> + '_ {
        let table = match scheme {
            Scheme::Legacy63 => &self.legacy,
            Scheme::Current34 => &self.current,
        };
        table.iter().map(move |(code, p)| {
            (
                Unit {
                    scheme,
                    code: *code,
                },
                p,
            )
        })
    }

    /// The legacy units that went into a current unit.
    pub fn members(&self, current: u8) -> impl Iterator<Item = u8> + '_ {
        self.legacy
            .iter()
            .filter(move |(_, p)| p.current_code == current)
            .map(|(code, _)| *code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_have_63_and_34_units() {
        let p = provinces();
        assert_eq!(p.units(Scheme::Legacy63).count(), 63);
        assert_eq!(p.units(Scheme::Current34).count(), 34);
    }

    #[test]
    fn merged_units_take_the_seat_code_not_the_namesake() {
        let p = provinces();
        // Yên Bái (15) and Lào Cai (10) became Lào Cai with code 15.
        assert_eq!(p.get(Scheme::Legacy63, 10).unwrap().current_code, 15);
        assert_eq!(p.get(Scheme::Legacy63, 15).unwrap().name_vi, "Yên Bái");
        assert_eq!(p.get(Scheme::Current34, 15).unwrap().name_vi, "Lào Cai");
        assert_eq!(p.get(Scheme::Legacy63, 89).unwrap().current_code, 91);
        let mut members: Vec<u8> = p.members(24).collect();
        members.sort();
        assert_eq!(members, vec![24, 27]);
    }

    #[test]
    fn every_legacy_unit_maps_into_an_existing_current_unit() {
        let p = provinces();
        for (unit, prov) in p.units(Scheme::Legacy63) {
            assert!(
                p.get(Scheme::Current34, prov.current_code).is_some(),
                "{unit}"
            );
        }
        let unchanged = p
            .units(Scheme::Current34)
            .filter(|(u, _)| p.members(u.code).count() == 1)
            .count();
        assert_eq!(unchanged, 11);
    }

    #[test]
    fn scheme_switches_at_vietnam_midnight_on_1_july_2025() {
        let before = "2025-06-30T16:59:59Z".parse().unwrap();
        let after = "2025-06-30T17:00:00Z".parse().unwrap();
        assert_eq!(Scheme::in_force_at(before), Scheme::Legacy63);
        assert_eq!(Scheme::in_force_at(after), Scheme::Current34);
    }

    #[test]
    fn resolve_rejects_malformed_and_unknown_codes() {
        let p = provinces();
        assert!(p.resolve(Scheme::Legacy63, "1").is_none());
        assert!(p.resolve(Scheme::Legacy63, "03").is_none());
        assert!(p.resolve(Scheme::Current34, "10").is_none());
        assert_eq!(
            p.resolve(Scheme::Current34, "01"),
            Some(Unit {
                scheme: Scheme::Current34,
                code: 1
            })
        );
        assert_eq!(Unit::parse_tagged("o15").unwrap().current_code(), 15);
    }
}
