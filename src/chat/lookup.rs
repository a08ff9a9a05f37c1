//! Finding a province from what someone types on a phone: a code of either table ("58",
//! "34:56", "63:58"), or a name with or without diacritics, any case, with or without "tỉnh"
//! or "thành phố", and forgiving a typo or two ("ninh thuan", "Ninh Thuận", "ninh thuạn",
//! "tp hcm").

use crate::provinces::{provinces, Scheme, Unit};

/// What a query found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    One(Unit),
    /// Several units match equally well; the person should pick one.
    Several(Vec<Unit>),
    None,
}

/// Letters with Vietnamese diacritics, by the ASCII letter they fold to.
const FOLDS: [(&str, char); 7] = [
    ("àáảãạăằắẳẵặâầấẩẫậ", 'a'),
    ("èéẻẽẹêềếểễệ", 'e'),
    ("ìíỉĩị", 'i'),
    ("òóỏõọôồốổỗộơờớởỡợ", 'o'),
    ("ùúủũụưừứửữự", 'u'),
    ("ỳýỷỹỵ", 'y'),
    ("đ", 'd'),
];

/// Lowercase ASCII words: diacritics folded, punctuation dropped, whitespace collapsed.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        // Text typed as base letters and combining marks (decomposed, as some Vietnamese
        // keyboards send it): the marks go, as the precomposed letters' do below.
        if ('\u{300}'..='\u{36f}').contains(&c) {
            continue;
        }
        let c = FOLDS
            .iter()
            .find(|(set, _)| set.contains(c))
            .map_or(c, |(_, base)| *base);
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with(' ') && !out.is_empty() {
            out.push(' ');
        }
    }
    out.trim_end().to_string()
}

/// Words that say what kind of unit, not which.
const PREFIXES: [&str; 5] = ["thanh pho ", "tinh ", "tp ", "province of ", "city of "];

/// Common short forms, folded.
const ALIASES: [(&str, &str); 4] = [
    ("hcm", "ho chi minh"),
    ("sai gon", "ho chi minh"),
    ("saigon", "ho chi minh"),
    ("hn", "ha noi"),
];

fn key(text: &str) -> String {
    let mut k = fold(text);
    for p in PREFIXES {
        if let Some(rest) = k.strip_prefix(p) {
            k = rest.to_string();
        }
    }
    ALIASES
        .iter()
        .find(|(short, _)| *short == k)
        .map_or(k, |(_, long)| long.to_string())
}

/// Finds the unit `query` names, preferring `preferred`'s table where both tables hold a match
/// (a code, or a name both tables share such as "Hà Nội").
pub fn find(query: &str, preferred: Scheme) -> Found {
    let query = query.trim();
    if query.is_empty() {
        return Found::None;
    }
    let table = provinces();
    // Codes: "58", "34:56", "63:58".
    let (scheme, code) = match query.split_once(':') {
        Some(("34", code)) => (Some(Scheme::Current34), code),
        Some(("63", code)) => (Some(Scheme::Legacy63), code),
        _ => (None, query),
    };
    if !code.is_empty() && code.len() <= 2 && code.bytes().all(|b| b.is_ascii_digit()) {
        let code = format!("{:02}", code.parse::<u8>().unwrap_or(0));
        let order = match (scheme, preferred) {
            (Some(s), _) => vec![s],
            (None, Scheme::Current34) => vec![Scheme::Current34, Scheme::Legacy63],
            (None, Scheme::Legacy63) => vec![Scheme::Legacy63, Scheme::Current34],
        };
        return order
            .into_iter()
            .find_map(|s| table.resolve(s, &code))
            .map_or(Found::None, Found::One);
    }
    let wanted = key(query);
    if wanted.is_empty() {
        return Found::None;
    }
    let schemes = match preferred {
        Scheme::Current34 => [Scheme::Current34, Scheme::Legacy63],
        Scheme::Legacy63 => [Scheme::Legacy63, Scheme::Current34],
    };
    // Best match first: exact, then the start of a name, then within two typos.
    let tiers: [&dyn Fn(&str) -> bool; 3] = [
        &|name: &str| name == wanted,
        &|name: &str| {
            (wanted.len() >= 3 && name.starts_with(&wanted)) || name.replace(' ', "") == wanted
        },
        &|name: &str| {
            wanted.len() >= 4 && distance(name, &wanted) <= (wanted.len() / 4).clamp(1, 2)
        },
    ];
    for matches in tiers {
        for scheme in schemes {
            let found: Vec<Unit> = table
                .units(scheme)
                .filter(|(_, p)| matches(&key(&p.name_ascii)))
                .map(|(u, _)| u)
                .collect();
            match found.len() {
                0 => continue,
                1 => return Found::One(found[0]),
                _ => return Found::Several(found),
            }
        }
    }
    Found::None
}

/// Edit distance (insertions, deletions, substitutions) between two short ASCII strings.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<u8> = b.bytes().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(q: &str, s: Scheme) -> String {
        match find(q, s) {
            Found::One(u) => u.to_string(),
            other => panic!("{q}: {other:?}"),
        }
    }

    #[test]
    fn names_with_or_without_diacritics_and_codes_of_either_table() {
        let cur = Scheme::Current34;
        for q in [
            "ninh thuan",
            "Ninh Thuận",
            "NINH THUẬN",
            "tỉnh Ninh Thuận",
            "ninh thuạn",
            "ninh thuna",
            "ninhthuan",
            "58",
            "63:58",
        ] {
            assert_eq!(one(q, cur), "o58", "{q}");
        }
        assert_eq!(one("Đắk Lắk", cur), "n66");
        assert_eq!(one("dak lak", cur), "n66");
        assert_eq!(one("tp hcm", cur), "n79");
        assert_eq!(one("Thành phố Hồ Chí Minh", cur), "n79");
        assert_eq!(one("hà nội", cur), "n01");
        assert_eq!(one("hà nội", Scheme::Legacy63), "o01");
        // 15 is Lào Cai in the 34-unit table and Yên Bái in the 63-unit one.
        assert_eq!(one("15", cur), "n15");
        assert_eq!(one("15", Scheme::Legacy63), "o15");
        assert_eq!(one("63:15", cur), "o15");
        assert_eq!(one("Khánh Hòa", cur), "n56");
        // Decomposed: base letters followed by combining marks.
        assert_eq!(one("Ninh Thua\u{323}\u{302}n", cur), "o58");
        assert_eq!(
            one(
                "Tha\u{300}nh pho\u{302}\u{301} Ho\u{302}\u{300} Chi\u{301} Minh",
                cur
            ),
            "n79"
        );
        assert_eq!(
            one("Bi\u{300}nh Du\u{31b}o\u{31b}ng", Scheme::Legacy63),
            "o74"
        );
    }

    #[test]
    fn nonsense_and_ambiguity_are_said_so() {
        assert_eq!(find("", Scheme::Current34), Found::None);
        assert_eq!(find("xyzzy", Scheme::Current34), Found::None);
        assert_eq!(find("99", Scheme::Current34), Found::None);
        assert_eq!(find("<b>", Scheme::Current34), Found::None);
        assert!(matches!(find("hai", Scheme::Legacy63), Found::Several(v) if v.len() == 2));
    }
}
