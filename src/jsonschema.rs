//! JSON Schema files for registries that publish JSON: generated from the same descriptors
//! tiendo reads JSON with, with tiendo's validation rules added where a schema can state
//! them, so a registry can check an event before sending it. `docs/schema/` holds them;
//! `tests/encodings.rs` fails when they differ from what this module generates.

use prost_reflect::{FieldDescriptor, Kind as FieldKind, MessageDescriptor};
use serde_json::{json, Map, Value};

use crate::events::Kind;
use crate::wire;

/// The file name of `kind`'s schema in `docs/schema/`.
pub fn file_name(kind: Kind) -> String {
    format!("{}.schema.json", wire::descriptor(kind).full_name())
}

/// The JSON Schema (draft 2020-12) of `kind`'s proto3 JSON mapping.
pub fn schema(kind: Kind) -> Value {
    let message = wire::descriptor(kind);
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in message.fields() {
        let mut property = type_of(&field);
        if let Some(text) = comment(&message, field.path()) {
            property.insert("description".into(), text.into());
        }
        rules(
            field.name(),
            &mut property,
            &mut required,
            field.json_name(),
        );
        properties.insert(field.json_name().to_string(), Value::Object(property));
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": file_name(kind),
        "title": message.full_name(),
        "description": comment(&message, message.path()).unwrap_or_default(),
        "type": "object",
        "properties": properties,
        "required": required,
    })
}

/// The proto3 JSON forms of a field's type.
fn type_of(field: &FieldDescriptor) -> Map<String, Value> {
    let value = match field.kind() {
        FieldKind::String => json!({"type": "string"}),
        FieldKind::Bool => json!({"type": "boolean"}),
        // 64-bit integers may be written as numbers or as decimal strings.
        FieldKind::Uint64 | FieldKind::Fixed64 => {
            json!({"type": ["integer", "string"], "minimum": 0, "pattern": "^[0-9]+$"})
        }
        FieldKind::Int64 | FieldKind::Sint64 | FieldKind::Sfixed64 => {
            json!({"type": ["integer", "string"], "pattern": "^-?[0-9]+$"})
        }
        FieldKind::Enum(e) => {
            // By name or by number.
            let names = e.values().map(|v| Value::from(v.name()));
            let numbers = e.values().map(|v| Value::from(v.number()));
            json!({"enum": names.chain(numbers).collect::<Vec<_>>()})
        }
        FieldKind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => json!({
            "type": "string",
            "format": "date-time",
            "description": "RFC 3339, with Z or an offset: 2025-08-01T10:00:00+07:00",
        }),
        _ => json!({}),
    };
    match value {
        Value::Object(map) => map,
        _ => unreachable!("schemas above are objects"),
    }
}

/// tiendo's validation (src/decode.rs), where a schema can say it.
fn rules(name: &str, property: &mut Map<String, Value>, required: &mut Vec<String>, json: &str) {
    let mut set = |k: &str, v: Value| {
        property.insert(k.to_string(), v);
    };
    match name {
        "event_id" => {
            set("pattern", "^[!-~]{1,128}$".into());
            required.push(json.into());
        }
        "province_code" => {
            set("pattern", "^[0-9]{2}$".into());
            required.push(json.into());
        }
        "dataset" => {
            let defaults = crate::config::ValidationSettings::default().datasets;
            set("examples", json!(defaults));
            required.push(json.into());
        }
        "record_count" => {
            set("minimum", 1.into());
            set("pattern", "^[1-9][0-9]*$".into());
            required.push(json.into());
        }
        "channel" => {
            set("not", json!({"enum": ["CHANNEL_UNSPECIFIED", 0]}));
            required.push(json.into());
        }
        "occurred_at" | "completed_at" => required.push(json.into()),
        _ => {}
    }
}

/// The comment above a message or field in the .proto file.
fn comment(message: &MessageDescriptor, path: &[i32]) -> Option<String> {
    let info = message
        .parent_file_descriptor_proto()
        .source_code_info
        .as_ref()?;
    let location = info.location.iter().find(|l| l.path == path)?;
    let text = location.leading_comments.as_deref()?;
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_states_the_fields_and_rules() {
        let s = schema(Kind::Records);
        assert_eq!(s["title"], "tiendo.v1.RecordDigitized");
        assert_eq!(s["properties"]["eventId"]["pattern"], "^[!-~]{1,128}$");
        assert!(s["properties"]["eventId"]["description"]
            .as_str()
            .unwrap()
            .contains("re-send"));
        assert_eq!(s["properties"]["occurredAt"]["format"], "date-time");
        assert_eq!(
            s["required"],
            json!([
                "eventId",
                "provinceCode",
                "dataset",
                "recordCount",
                "occurredAt"
            ])
        );
        let p = schema(Kind::Procedures);
        assert!(p["properties"]["channel"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("CHANNEL_IN_PERSON")));
    }
}
