//! Targets: how many records each province must digitize per dataset, and by when.
//!
//! CSV columns `province,dataset,target,deadline[,scheme]`; `scheme` is `63` or `34`
//! (default `34`), the deadline a date (end of that day, Vietnam time, is the limit).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::csv_line::Lines;
use crate::provinces::{provinces, Scheme, Unit};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("cannot read targets file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("targets line {line}: {message}")]
    Row { line: u64, message: String },
}

/// A target for one unit and dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Target {
    pub count: u64,
    pub deadline: NaiveDate,
}

/// Targets by (unit, dataset name).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Targets {
    pub by_unit: BTreeMap<(Unit, String), Target>,
}

#[derive(Deserialize)]
struct Row {
    province: String,
    dataset: String,
    target: u64,
    deadline: NaiveDate,
    #[serde(default)]
    scheme: Option<String>,
}

impl Targets {
    pub fn load(path: &Path, datasets: &[String]) -> Result<Targets, TargetError> {
        let text = std::fs::read_to_string(path).map_err(|source| TargetError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Targets::parse(&text, datasets)
    }

    pub fn parse(text: &str, datasets: &[String]) -> Result<Targets, TargetError> {
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .comment(Some(b'#'))
            .from_reader(text.as_bytes());
        let headers = reader.headers().cloned().map_err(|e| TargetError::Row {
            line: 1,
            message: e.to_string(),
        })?;
        let mut by_unit = BTreeMap::new();
        // The line each (unit, dataset) was first given on.
        let mut given: BTreeMap<(Unit, String), u64> = BTreeMap::new();
        let mut lines = Lines::new(text);
        for record in reader.records() {
            let record = record.map_err(|e| TargetError::Row {
                line: e.position().map_or(0, |p| lines.of(p)),
                message: e.to_string(),
            })?;
            let line = record.position().map_or(0, |p| lines.of(p));
            let bad = |message: String| TargetError::Row { line, message };
            let row: Row = record
                .deserialize(Some(&headers))
                .map_err(|e| bad(e.to_string()))?;
            let (scheme, tag) = match row.scheme.as_deref().unwrap_or("34") {
                "34" | "" => (Scheme::Current34, "34"),
                "63" => (Scheme::Legacy63, "63"),
                other => return Err(bad(format!("scheme must be 34 or 63, not {other}"))),
            };
            let unit = provinces().resolve(scheme, &row.province).ok_or_else(|| {
                bad(format!(
                    "unknown province {} in the {tag}-unit table",
                    row.province
                ))
            })?;
            // Two targets for one province and dataset: which one holds would be the file's
            // order, not anyone's decision.
            if let Some(first) = given.insert((unit, row.dataset.clone()), line) {
                return Err(bad(format!(
                    "{tag}:{} {} already has a target on line {first}",
                    row.province, row.dataset
                )));
            }
            if !datasets.contains(&row.dataset) {
                return Err(bad(format!("unknown dataset {}", row.dataset)));
            }
            if row.target == 0 {
                return Err(bad(format!(
                    "target of {} {} is 0",
                    row.province, row.dataset
                )));
            }
            by_unit.insert(
                (unit, row.dataset),
                Target {
                    count: row.target,
                    deadline: row.deadline,
                },
            );
        }
        Ok(Targets { by_unit })
    }

    /// The target of a current (34-table) unit: its own if set, else the sum of its legacy
    /// members' targets with the latest of their deadlines.
    pub fn current(&self, code: u8, dataset: &str) -> Option<Target> {
        let own = Unit {
            scheme: Scheme::Current34,
            code,
        };
        if let Some(t) = self.by_unit.get(&(own, dataset.to_string())) {
            return Some(*t);
        }
        self.members(code, dataset)
            .flatten()
            .fold(None, |acc: Option<Target>, t| {
                Some(match acc {
                    None => *t,
                    Some(a) => Target {
                        count: a.count + t.count,
                        deadline: a.deadline.max(t.deadline),
                    },
                })
            })
    }

    /// The targets of a current unit's legacy members, `None` for a member without one.
    fn members<'a>(
        &'a self,
        code: u8,
        dataset: &'a str,
    ) -> impl Iterator<Item = Option<&'a Target>> + 'a {
        provinces().members(code).map(move |m| {
            let unit = Unit {
                scheme: Scheme::Legacy63,
                code: m,
            };
            self.by_unit.get(&(unit, dataset.to_string()))
        })
    }

    /// The current units and datasets whose target (see [`Targets::current`]) sums the
    /// targets of only some of their legacy members, while their figures count the records
    /// of all: such a target may read as reached early. A file to complete.
    pub fn partial(&self) -> BTreeSet<(Unit, String)> {
        self.by_unit
            .keys()
            .filter(|(unit, _)| unit.scheme == Scheme::Legacy63)
            .filter_map(|(unit, dataset)| {
                let code = provinces().get(Scheme::Legacy63, unit.code)?.current_code;
                let current = Unit {
                    scheme: Scheme::Current34,
                    code,
                };
                let own = self.by_unit.contains_key(&(current, dataset.clone()));
                let missing = self.members(code, dataset).any(|t| t.is_none());
                (!own && missing).then(|| (current, dataset.clone()))
            })
            .collect()
    }

    pub fn legacy(&self, code: u8, dataset: &str) -> Option<Target> {
        let unit = Unit {
            scheme: Scheme::Legacy63,
            code,
        };
        self.by_unit.get(&(unit, dataset.to_string())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds() -> Vec<String> {
        vec!["civil_status".into(), "land".into()]
    }

    #[test]
    fn a_bad_row_is_named_by_its_line_and_a_target_given_twice_is_refused() {
        let err = |text: &str| Targets::parse(text, &ds()).unwrap_err().to_string();
        let head = "province,dataset,target,deadline\n# a comment\n01,land,10,2025-12-31\n";
        assert_eq!(
            err(&format!("{head}99,land,10,2025-12-31\n")),
            "targets line 4: unknown province 99 in the 34-unit table"
        );
        assert_eq!(
            err(&format!("{head}01,weather,10,2025-12-31\n")),
            "targets line 4: unknown dataset weather"
        );
        assert_eq!(
            err(&format!("{head}01,land,20,2026-06-30\n")),
            "targets line 4: 34:01 land already has a target on line 3"
        );
        assert!(
            err(&format!("{head}01,civil_status,many,2025-12-31\n")).starts_with("targets line 4:")
        );
    }

    #[test]
    fn legacy_targets_sum_into_the_current_unit() {
        let t = Targets::parse(
            "province,dataset,target,deadline,scheme\n\
             10,civil_status,100,2024-12-31,63\n\
             15,civil_status,50,2025-01-31,63\n",
            &ds(),
        )
        .unwrap();
        let lao_cai = t.current(15, "civil_status").unwrap();
        assert_eq!(lao_cai.count, 150);
        assert_eq!(
            lao_cai.deadline,
            NaiveDate::from_ymd_opt(2025, 1, 31).unwrap()
        );
        assert_eq!(t.legacy(15, "civil_status").unwrap().count, 50);
    }

    #[test]
    fn a_merged_unit_whose_target_misses_a_member_is_named() {
        // Ninh Thuận (58) has a target; Khánh Hòa (56), with which it merged into 34:56, not.
        // Lào Cai (10) and Yên Bái (15) both have one; Bắc Ninh (34:24) one of its own.
        let t = Targets::parse(
            "province,dataset,target,deadline,scheme\n\
             58,civil_status,100,2024-12-31,63\n\
             10,land,100,2024-12-31,63\n\
             15,land,50,2025-01-31,63\n\
             24,land,70,2025-01-31,63\n\
             24,land,500,2025-01-31,34\n",
            &ds(),
        )
        .unwrap();
        assert_eq!(t.current(56, "civil_status").unwrap().count, 100);
        assert_eq!(t.current(15, "land").unwrap().count, 150);
        let khanh_hoa = Unit {
            scheme: Scheme::Current34,
            code: 56,
        };
        assert_eq!(
            t.partial().into_iter().collect::<Vec<_>>(),
            [(khanh_hoa, "civil_status".to_string())]
        );
    }

    #[test]
    fn bad_rows_are_refused() {
        assert!(Targets::parse(
            "province,dataset,target,deadline\n99,land,1,2025-01-01\n",
            &ds()
        )
        .is_err());
        assert!(Targets::parse(
            "province,dataset,target,deadline\n01,cats,1,2025-01-01\n",
            &ds()
        )
        .is_err());
        assert!(Targets::parse(
            "province,dataset,target,deadline\n01,land,x,2025-01-01\n",
            &ds()
        )
        .is_err());
    }
}
