//! Subject identifier builders (RFC 9493) for the development transmitter, `emit` and tests.

use serde_json::{json, Map, Value};

/// `{"format":"iss_sub","iss":…,"sub":…}`
pub fn iss_sub(iss: &str, sub: &str) -> Value {
    json!({"format": "iss_sub", "iss": iss, "sub": sub})
}

/// `{"format":"opaque","id":…}`
pub fn opaque(id: &str) -> Value {
    json!({"format": "opaque", "id": id})
}

/// `{"format":"email","email":…}`
pub fn email(email: &str) -> Value {
    json!({"format": "email", "email": email})
}

/// `{"format":"jwt_id","iss":…,"jti":…}`
pub fn jwt_id(iss: &str, jti: &str) -> Value {
    json!({"format": "jwt_id", "iss": iss, "jti": jti})
}

/// `{"format":"ip-addresses","ip-addresses":[…]}`
pub fn ip_addresses(ips: &[&str]) -> Value {
    json!({"format": "ip-addresses", "ip-addresses": ips})
}

/// A complex subject from `(member, identifier)` pairs (`user`, `session`, `device`, `tenant`…).
pub fn complex(members: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    m.insert("format".into(), json!("complex"));
    for (k, v) in members {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}
