//! A node's `instance_info` and the config drive in it, as Ironic keeps
//! them: a deploy or rebuild given a `configdrive` stores it in
//! `instance_info["configdrive"]` (Ironic's `_store_configdrive` without an
//! object store), where it stays until tear down forgets the instance; the
//! API shows it as `******`, as Ironic's `mask_dict_password` does for
//! instance_info (nova's config drive holds the admin password and user
//! data). Callers: `service::provision` (store) and `model::Node::to_api`
//! (mask).

use serde_json::Value;

use crate::model::{is_secret_key, Dict, MASK};

/// The instance_info key Ironic keeps the config drive under.
pub const CONFIGDRIVE: &str = "configdrive";

/// Keep `configdrive` (a string or a JSON object, as the API accepts) in
/// `instance_info`; `None` or null leaves it as it is, as Ironic does.
pub fn store_configdrive(instance_info: &mut Dict, configdrive: Option<&Value>) {
    if let Some(cd) = configdrive.filter(|c| !c.is_null()) {
        instance_info.insert(CONFIGDRIVE.into(), cd.clone());
    }
}

/// `instance_info` as the API shows it: the config drive and secrets masked.
pub fn masked(instance_info: &Dict) -> Dict {
    instance_info
        .iter()
        .map(|(k, v)| {
            let secret = k == CONFIGDRIVE || is_secret_key(k);
            let v = if secret && !v.is_null() {
                Value::String(MASK.into())
            } else {
                v.clone()
            };
            (k.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn dict(v: Value) -> Dict {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn a_configdrive_is_stored_and_shown_masked() {
        let mut ii = dict(json!({"image_source": "img-1"}));
        store_configdrive(&mut ii, Some(&json!("H4sIAAAA")));
        assert_eq!(ii[CONFIGDRIVE], "H4sIAAAA");
        let shown = masked(&ii);
        assert_eq!(shown[CONFIGDRIVE], MASK);
        assert_eq!(shown["image_source"], "img-1");
    }

    #[test]
    fn a_json_configdrive_is_stored_as_given() {
        let mut ii = Dict::new();
        let cd = json!({"meta_data": {"hostname": "h"}, "user_data": "#!/bin/sh"});
        store_configdrive(&mut ii, Some(&cd));
        assert_eq!(ii[CONFIGDRIVE], cd);
        assert_eq!(masked(&ii)[CONFIGDRIVE], MASK);
    }

    #[test]
    fn no_configdrive_keeps_what_was_there() {
        let mut ii = dict(json!({"configdrive": "old"}));
        store_configdrive(&mut ii, None);
        store_configdrive(&mut ii, Some(&Value::Null));
        assert_eq!(ii[CONFIGDRIVE], "old");
        let mut empty = Dict::new();
        store_configdrive(&mut empty, None);
        assert!(empty.is_empty());
        assert!(masked(&empty).is_empty());
    }

    #[test]
    fn passwords_in_instance_info_stay_masked() {
        let ii = dict(json!({"admin_password": "s3cret", "root_gb": "10"}));
        let shown = masked(&ii);
        assert_eq!(shown["admin_password"], MASK);
        assert_eq!(shown["root_gb"], "10");
    }
}
