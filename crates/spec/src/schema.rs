//! JSON Schemas generated from the types: the fleet spec, the agent's bootstrap config and the
//! manifest. The committed copies under `schema/` are checked against these by a test.

use schemars::JsonSchema;
use serde_json::Value;

use crate::bootstrap::AgentBootstrap;
use crate::fleet::FleetSpec;
use crate::manifest::Manifest;

/// The JSON Schema (draft 2020-12) of the fleet spec as YAML accepts it.
pub fn fleet_schema() -> Value {
    schema_of::<FleetSpec>()
}

/// The JSON Schema of the agent's bootstrap config ([`AgentBootstrap`]).
pub fn bootstrap_schema() -> Value {
    schema_of::<AgentBootstrap>()
}

/// The JSON Schema of a manifest ([`Manifest`]), as the agent API takes it.
pub fn manifest_schema() -> Value {
    schema_of::<Manifest>()
}

fn schema_of<T: JsonSchema>() -> Value {
    schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// The files under the workspace root that hold generated text, with the text each must hold.
/// Tests compare them and rewrite them in bless mode.
pub fn generated_files() -> Vec<(&'static str, String)> {
    let json = |value: Value| {
        let mut text =
            serde_json::to_string_pretty(&value).expect("a JSON value always serializes");
        text.push('\n');
        text
    };
    vec![
        ("schema/fleet.schema.json", json(fleet_schema())),
        ("schema/agent-bootstrap.schema.json", json(bootstrap_schema())),
        ("schema/manifest.schema.json", json(manifest_schema())),
        ("docs/spec-reference.md", crate::reference::spec_reference_markdown()),
    ]
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::decode::{
        BOOT_COMMAND_KEYS, BOOT_FILE_KEYS, BOOT_KEYS, BOUNDS_KEYS, DISK_KEYS, FLEET_KEYS,
        HEALTH_HTTP_KEYS, HEALTH_KINDS, HEALTH_TCP_KEYS, HOST_POOL_KEYS, HOST_POOL_ZONE_KEYS,
        IMAGE_KEYS, INSTANCE_KEYS, KeySpec, MONITORING_KEYS, NETWORK_KEYS, PORT_KEYS,
        REQUIREMENTS_KEYS, RESTART_KEYS, ROOT_VOLUME_KEYS, UPDATE_KEYS,
    };

    /// Follows `$ref` and the `allOf: [one]` wrapper schemars puts around described refs.
    fn resolve<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            let name = reference.trim_start_matches("#/$defs/");
            return resolve(root, &root["$defs"][name]);
        }
        if let Some([single]) = schema.get("allOf").and_then(Value::as_array).map(Vec::as_slice) {
            return resolve(root, single);
        }
        schema
    }

    /// The object alternative of a `oneOf`/`anyOf` (or the schema itself when it is an object).
    fn object_alternatives<'a>(root: &'a Value, schema: &'a Value) -> Vec<&'a Value> {
        let schema = resolve(root, schema);
        // Alternatives of alternatives (an `Option` of a `oneOf`) are flattened.
        let alternatives: Vec<&Value> = ["oneOf", "anyOf"]
            .iter()
            .filter_map(|key| schema.get(*key).and_then(Value::as_array))
            .flatten()
            .flat_map(|alternative| {
                let alternative = resolve(root, alternative);
                if alternative.get("oneOf").is_some() || alternative.get("anyOf").is_some() {
                    object_alternatives(root, alternative)
                } else {
                    vec![alternative]
                }
            })
            .collect();
        if alternatives.is_empty() {
            vec![schema]
        } else {
            alternatives.into_iter().filter(|a| a.get("properties").is_some()).collect()
        }
    }

    fn assert_keys_match(what: &str, object: &Value, keys: &[KeySpec], check_origin: bool) {
        let properties = object["properties"].as_object().unwrap_or_else(|| {
            panic!("{what}: the schema has no properties: {object:#}");
        });
        let schema_names: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
        let decoder_names: BTreeSet<&str> = keys.iter().map(|key| key.name).collect();
        assert_eq!(schema_names, decoder_names, "{what}: keys differ");
        let required: BTreeSet<&str> = object
            .get("required")
            .and_then(Value::as_array)
            .map(|names| names.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let decoder_required: BTreeSet<&str> =
            keys.iter().filter(|key| key.required).map(|key| key.name).collect();
        assert_eq!(required, decoder_required, "{what}: required keys differ");
        if check_origin {
            for key in keys {
                assert_eq!(
                    properties[key.name]["x-origin"].as_str(),
                    Some(key.origin.as_str()),
                    "{what}.{}: origin differs",
                    key.name
                );
            }
        }
    }

    #[test]
    fn decoder_keys_equal_schema_properties() {
        let root = fleet_schema();
        assert_keys_match("FleetSpec", &root, FLEET_KEYS, true);
        let properties = &root["properties"];
        let monitoring = resolve(&root, &properties["monitoring"]);
        assert_keys_match("monitoring", monitoring, MONITORING_KEYS, true);
        let instance = resolve(&root, &properties["instances"]["items"]);
        assert_keys_match("instances[]", instance, INSTANCE_KEYS, true);
        let port = resolve(&root, &properties["ports"]["items"]);
        assert_keys_match("ports[]", port, PORT_KEYS, true);
        let update = resolve(&root, &properties["update"]);
        assert_keys_match("update", update, UPDATE_KEYS, false);
        let requirements = object_alternatives(&root, &instance["properties"]["requirements"]);
        assert_eq!(requirements.len(), 1, "{requirements:#?}");
        assert_keys_match("requirements", requirements[0], REQUIREMENTS_KEYS, false);
        let bounds = resolve(&root, &requirements[0]["properties"]["vcpu_count"]);
        assert_keys_match("requirements.vcpu_count", bounds, BOUNDS_KEYS, false);

        for (path, object) in [("", &root), ("instances[].", instance)] {
            let network = resolve(&root, &object["properties"]["network"]["additionalProperties"]);
            assert_keys_match(&format!("{path}network.REGION"), network, NETWORK_KEYS, false);
            let image = object_alternatives(&root, &object["properties"]["image"]);
            assert_eq!(image.len(), 1, "image has one mapping form: {image:#?}");
            assert_keys_match(&format!("{path}image"), image[0], IMAGE_KEYS, false);
            let boot = object_alternatives(&root, &object["properties"]["boot"]);
            assert_eq!(boot.len(), 1, "{boot:#?}");
            assert_keys_match(&format!("{path}boot"), boot[0], BOOT_KEYS, false);
            let file = resolve(&root, &boot[0]["properties"]["files"]["items"]);
            assert_keys_match(&format!("{path}boot.files[]"), file, BOOT_FILE_KEYS, false);
            let command = resolve(&root, &boot[0]["properties"]["commands"]["items"]);
            assert_keys_match(&format!("{path}boot.commands[]"), command, BOOT_COMMAND_KEYS, false);
            let volume = object_alternatives(&root, &object["properties"]["root_volume"]);
            assert_eq!(volume.len(), 1, "{volume:#?}");
            assert_keys_match(&format!("{path}root_volume"), volume[0], ROOT_VOLUME_KEYS, false);
        }

        let pool = resolve(&root, &properties["host_pools"]["additionalProperties"]);
        assert_keys_match("host_pools.NAME", pool, HOST_POOL_KEYS, false);
        let zone = resolve(&root, &pool["properties"]["zones"]["additionalProperties"]);
        assert_keys_match("host_pools.NAME.zones.ZONE", zone, HOST_POOL_ZONE_KEYS, false);
        let disk = resolve(&root, &instance["properties"]["disks"]["additionalProperties"]);
        assert_keys_match("instances[].disks.DEVICE", disk, DISK_KEYS, false);

        let restart = object_alternatives(&root, &instance["properties"]["restart"]);
        assert_eq!(restart.len(), 1, "restart has one mapping form: {restart:#?}");
        assert_keys_match("restart", restart[0], RESTART_KEYS, false);

        let health = object_alternatives(&root, &instance["properties"]["health"]);
        let kinds: BTreeSet<&str> = health
            .iter()
            .flat_map(|alternative| alternative["properties"].as_object().unwrap().keys())
            .map(String::as_str)
            .collect();
        let decoder_kinds: BTreeSet<&str> = HEALTH_KINDS.iter().map(|key| key.name).collect();
        assert_eq!(kinds, decoder_kinds, "health kinds differ");
        for (kind, keys) in [("http", HEALTH_HTTP_KEYS), ("tcp", HEALTH_TCP_KEYS)] {
            let alternative = health
                .iter()
                .find(|a| a["properties"].get(kind).is_some())
                .expect("the kind is in the schema");
            let object = resolve(&root, &alternative["properties"][kind]);
            assert_keys_match(&format!("health.{kind}"), object, keys, false);
        }
    }

    #[test]
    fn deployer_objects_accept_unknown_keys_and_flotilla_objects_refuse_them() {
        let root = fleet_schema();
        let properties = &root["properties"];
        for object in [
            &root,
            resolve(&root, &properties["monitoring"]),
            resolve(&root, &properties["instances"]["items"]),
            resolve(&root, &properties["ports"]["items"]),
        ] {
            assert_eq!(object.get("additionalProperties"), None, "{object:#}");
        }
        let instance = resolve(&root, &properties["instances"]["items"]);
        let mut flotilla_objects = vec![resolve(&root, &properties["update"])];
        flotilla_objects.extend(object_alternatives(&root, &instance["properties"]["restart"]));
        flotilla_objects.extend(object_alternatives(&root, &instance["properties"]["health"]));
        for object in flotilla_objects {
            assert_eq!(object["additionalProperties"], Value::Bool(false), "{object:#}");
        }
    }

    #[test]
    fn every_property_is_described() {
        fn walk(path: &str, value: &Value, missing: &mut Vec<String>) {
            match value {
                Value::Object(map) => {
                    // An enum variant written as a one-key mapping (`{http: …}`) is described
                    // on the mapping, not on its only key.
                    let is_described_variant = map.get("description").is_some()
                        && map.get("properties").and_then(Value::as_object).map(|p| p.len())
                            == Some(1);
                    if let Some(Value::Object(properties)) = map.get("properties")
                        && !is_described_variant
                    {
                        for (name, property) in properties {
                            if property.get("description").is_none() {
                                missing.push(format!("{path}.{name}"));
                            }
                        }
                    }
                    for (key, child) in map {
                        walk(&format!("{path}/{key}"), child, missing);
                    }
                }
                Value::Array(items) => {
                    for (index, child) in items.iter().enumerate() {
                        walk(&format!("{path}/{index}"), child, missing);
                    }
                }
                _ => {}
            }
        }
        let mut missing = Vec::new();
        walk("fleet", &fleet_schema(), &mut missing);
        assert!(missing.is_empty(), "properties without a description: {missing:#?}");
    }
}
