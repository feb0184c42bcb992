//! Terraform's `DynamicValue` for a `kv_item`: an object of two string
//! attributes, `key` and `value`, in msgpack (what Terraform and OpenTofu
//! send and expect) or JSON (state upgrades, some older paths).
//!
//! In msgpack, as go-cty encodes it: an object is a map from attribute name
//! to value, a null is `nil`, and a value not known until apply is the
//! extension type 0 (or 12, go-cty's unknown with refinements).

use rmpv::Value;

use crate::tfplugin6::DynamicValue;

/// go-cty's msgpack extension for an unknown value.
const UNKNOWN: i8 = 0;
/// ... and for an unknown value with refinements (known prefix, not null).
const REFINED_UNKNOWN: i8 = 12;

/// One attribute's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    /// A string.
    Known(String),
    /// `null`.
    Null,
    /// Known only after apply.
    Unknown,
}

impl Attr {
    /// The string, when known.
    pub fn known(&self) -> Option<&str> {
        match self {
            Attr::Known(text) => Some(text),
            Attr::Null | Attr::Unknown => None,
        }
    }
}

/// A `kv_item`, resource or data source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The `key` attribute.
    pub key: Attr,
    /// The `value` attribute.
    pub value: Attr,
}

impl Item {
    /// An item whose attributes are both known.
    pub fn known(key: &str, value: &str) -> Item {
        Item {
            key: Attr::Known(key.into()),
            value: Attr::Known(value.into()),
        }
    }
}

/// Reads a `DynamicValue`: `None` for a null object (no resource: before a
/// create, after a destroy).
pub fn decode(value: &DynamicValue) -> Result<Option<Item>, String> {
    if !value.msgpack.is_empty() {
        let decoded = rmpv::decode::read_value(&mut &value.msgpack[..])
            .map_err(|e| format!("the value is not msgpack: {e}"))?;
        return from_msgpack(&decoded);
    }
    if !value.json.is_empty() {
        let decoded: serde_json::Value = serde_json::from_slice(&value.json)
            .map_err(|e| format!("the value is not JSON: {e}"))?;
        return from_json(&decoded);
    }
    Err("the value is empty: neither msgpack nor JSON".into())
}

fn from_msgpack(value: &Value) -> Result<Option<Item>, String> {
    let entries = match value {
        Value::Nil => return Ok(None),
        Value::Map(entries) => entries,
        Value::Ext(UNKNOWN | REFINED_UNKNOWN, _) => {
            return Err("the whole object is unknown".into());
        }
        other => return Err(format!("expected an object, got {other}")),
    };
    let attr = |name: &str| -> Result<Attr, String> {
        let found = entries
            .iter()
            .find(|(k, _)| k.as_str() == Some(name))
            .map(|(_, v)| v);
        match found {
            None | Some(Value::Nil) => Ok(Attr::Null),
            Some(Value::Ext(UNKNOWN | REFINED_UNKNOWN, _)) => Ok(Attr::Unknown),
            Some(Value::String(text)) => text
                .as_str()
                .map(|t| Attr::Known(t.to_string()))
                .ok_or_else(|| format!("{name} is not UTF-8")),
            Some(other) => Err(format!("{name} is not a string: {other}")),
        }
    };
    Ok(Some(Item {
        key: attr("key")?,
        value: attr("value")?,
    }))
}

/// State as JSON (`UpgradeResourceState`'s raw state, or a JSON
/// `DynamicValue`).
pub fn from_json(value: &serde_json::Value) -> Result<Option<Item>, String> {
    let object = match value {
        serde_json::Value::Null => return Ok(None),
        serde_json::Value::Object(object) => object,
        other => return Err(format!("expected an object, got {other}")),
    };
    let attr = |name: &str| match object.get(name) {
        None | Some(serde_json::Value::Null) => Ok(Attr::Null),
        Some(serde_json::Value::String(text)) => Ok(Attr::Known(text.clone())),
        Some(other) => Err(format!("{name} is not a string: {other}")),
    };
    Ok(Some(Item {
        key: attr("key")?,
        value: attr("value")?,
    }))
}

/// A `DynamicValue` in msgpack: the item, or null.
pub fn encode(item: Option<&Item>) -> DynamicValue {
    let value = match item {
        None => Value::Nil,
        Some(item) => Value::Map(vec![
            (Value::from("key"), attr_value(&item.key)),
            (Value::from("value"), attr_value(&item.value)),
        ]),
    };
    let mut msgpack = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut msgpack, &value);
    DynamicValue {
        msgpack,
        ..DynamicValue::default()
    }
}

fn attr_value(attr: &Attr) -> Value {
    match attr {
        Attr::Known(text) => Value::from(text.as_str()),
        Attr::Null => Value::Nil,
        // go-cty's unknown value: extension 0 with a zero byte.
        Attr::Unknown => Value::Ext(UNKNOWN, vec![0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_round_trip_through_msgpack() {
        for item in [
            None,
            Some(Item::known("k", "v")),
            Some(Item {
                key: Attr::Known("k".into()),
                value: Attr::Unknown,
            }),
            Some(Item {
                key: Attr::Null,
                value: Attr::Null,
            }),
        ] {
            assert_eq!(decode(&encode(item.as_ref())).unwrap(), item);
        }
    }

    #[test]
    fn json_state_reads_as_an_item() {
        let value = DynamicValue {
            json: br#"{"key":"a","value":"b"}"#.to_vec(),
            ..DynamicValue::default()
        };
        assert_eq!(decode(&value).unwrap(), Some(Item::known("a", "b")));
    }

    #[test]
    fn other_shapes_are_errors_not_panics() {
        for bytes in [
            &[0xc3u8][..],
            &[0x92, 0x01, 0x02],
            &[0x81, 0xa3, b'k', b'e', b'y', 0x05],
            // A map of one entry, cut short.
            &[0x81],
        ] {
            let value = DynamicValue {
                msgpack: bytes.to_vec(),
                ..DynamicValue::default()
            };
            assert!(decode(&value).is_err(), "{bytes:?}");
        }
        assert!(decode(&DynamicValue::default()).is_err());
    }
}
