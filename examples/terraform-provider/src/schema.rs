//! What the provider declares: no provider configuration, a resource and a
//! data source `kv_item`.

use goplugin::protobuf::MessageField;

use crate::provider::KV_ITEM;
use crate::tfplugin6::{Schema, ServerCapabilities, get_metadata, get_provider_schema, schema};

/// A cty type, as the protocol carries it: its JSON.
const STRING: &[u8] = b"\"string\"";

fn attribute(name: &str, description: &str, required: bool) -> schema::Attribute {
    schema::Attribute {
        name: name.into(),
        type_: STRING.to_vec(),
        description: description.into(),
        required,
        computed: !required,
        ..Default::default()
    }
}

fn block(attributes: Vec<schema::Attribute>, description: &str) -> Schema {
    Schema {
        block: MessageField::some(schema::Block {
            attributes,
            description: description.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `GetProviderSchema`'s answer.
pub fn provider_schema() -> get_provider_schema::Response {
    let resource = block(
        vec![
            attribute(
                "key",
                "The key: one plain file name; the value is stored in kv_<key>. Changing it replaces the item.",
                true,
            ),
            attribute("value", "The text stored under the key.", true),
        ],
        "A value stored in a kv_<key> file of the working directory.",
    );
    let data_source = block(
        vec![
            attribute("key", "The key to read.", true),
            attribute("value", "The text stored under the key.", false),
        ],
        "Reads the value stored in a kv_<key> file of the working directory.",
    );
    get_provider_schema::Response {
        provider: MessageField::some(block(Vec::new(), "")),
        resource_schemas: [(KV_ITEM.to_string(), resource)].into(),
        data_source_schemas: [(KV_ITEM.to_string(), data_source)].into(),
        server_capabilities: MessageField::some(ServerCapabilities::default()),
        ..Default::default()
    }
}

/// `GetMetadata`'s answer.
pub fn metadata() -> get_metadata::Response {
    get_metadata::Response {
        server_capabilities: MessageField::some(ServerCapabilities::default()),
        resources: vec![get_metadata::ResourceMetadata {
            type_name: KV_ITEM.into(),
            ..Default::default()
        }],
        data_sources: vec![get_metadata::DataSourceMetadata {
            type_name: KV_ITEM.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
