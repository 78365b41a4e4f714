//! Bucket policies, evaluated rather than matched as text: which statements
//! make a bucket public, and whether the policy denies every request that
//! does not use TLS.
//!
//! The rules follow AWS's documented meaning of "public" for bucket
//! policies: an `Allow` to every principal (`"*"`, `{"AWS": "*"}` or a
//! `NotPrincipal`) is public unless a condition pins the caller to fixed
//! values of a restricting key (source IP, VPC, endpoint, account,
//! organization, principal ARN…). Conditions on other keys (for instance
//! `aws:SecureTransport`) do not make it private.

use serde_json::Value;

/// Condition keys that, with fixed (wildcard-free) values, restrict who can
/// use a statement; AWS's policy-status evaluation treats these as making an
/// otherwise public statement non-public.
const RESTRICTING_KEYS: &[&str] = &[
    "aws:sourceip",
    "aws:sourcevpc",
    "aws:sourcevpce",
    "aws:sourcearn",
    "aws:sourceaccount",
    "aws:sourceowner",
    "aws:principalaccount",
    "aws:principalarn",
    "aws:principalorgid",
    "aws:principalorgpaths",
    "aws:userid",
    "s3:dataaccesspointaccount",
    "s3:dataaccesspointarn",
];

/// A policy document's statements (a lone statement object counts as one).
pub fn statements(policy: &Value) -> Vec<&Value> {
    match policy.get("Statement") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(obj @ Value::Object(_)) => vec![obj],
        _ => Vec::new(),
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| match x {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            })
            .collect(),
        Some(Value::Bool(b)) => vec![b.to_string()],
        _ => Vec::new(),
    }
}

/// `Principal` is everyone: `"*"` or `{"AWS": "*"}` (also in a list).
fn principal_is_everyone(st: &Value) -> bool {
    if st.get("NotPrincipal").is_some() {
        return true; // "everyone except …"
    }
    match st.get("Principal") {
        Some(Value::String(s)) => s == "*",
        Some(Value::Object(m)) => m
            .get("AWS")
            .is_some_and(|aws| strings(Some(aws)).iter().any(|p| p == "*")),
        _ => false,
    }
}

fn effect_is(st: &Value, effect: &str) -> bool {
    st.get("Effect").and_then(Value::as_str) == Some(effect)
}

/// Whether the statement's conditions pin the caller down (see module docs).
fn restricted_by_condition(st: &Value) -> bool {
    let Some(Value::Object(ops)) = st.get("Condition") else {
        return false;
    };
    ops.iter().any(|(op, keys)| {
        // Negated operators ("everyone except this IP") restrict nothing;
        // neither do `…IfExists`, `ForAllValues:` and `Null`, which hold for
        // an anonymous request that lacks the key.
        if op.contains("Not") || op.ends_with("IfExists") || op.starts_with("ForAllValues") || op == "Null" {
            return false;
        }
        let Value::Object(keys) = keys else { return false };
        keys.iter().any(|(key, values)| {
            let key = key.to_ascii_lowercase();
            RESTRICTING_KEYS.contains(&key.as_str()) && {
                let vals = strings(Some(values));
                !vals.is_empty()
                    && vals
                        .iter()
                        .all(|v| !(v.contains(['*', '?']) || (key == "aws:sourceip" && wide_cidr(v))))
            }
        })
    })
}

/// An IPv4 range wider than /8 (or an IPv6 range wider than /32): AWS
/// counts those as public.
fn wide_cidr(v: &str) -> bool {
    match v.split_once('/') {
        Some((addr, bits)) => {
            let bits: u32 = bits.parse().unwrap_or(0);
            if addr.contains(':') { bits < 32 } else { bits < 8 }
        }
        None => false,
    }
}

/// Whether resource pattern `r` covers every name starting with `prefix`:
/// a literal prefix of it followed by one trailing `*`, no other wildcard.
fn covers_prefix(r: &str, prefix: &str) -> bool {
    match r.strip_suffix('*') {
        Some(lit) => !lit.contains(['*', '?']) && prefix.starts_with(lit),
        None => false,
    }
}

/// The statements that make the bucket public, by Sid (or index).
pub fn public_statements(policy: &Value) -> Vec<String> {
    statements(policy)
        .into_iter()
        .enumerate()
        .filter(|(_, st)| effect_is(st, "Allow") && principal_is_everyone(st) && !restricted_by_condition(st))
        .map(|(i, st)| label(st, i))
        .collect()
}

fn label(st: &Value, i: usize) -> String {
    st.get("Sid")
        .and_then(Value::as_str)
        .map_or_else(|| format!("statement {}", i + 1), |s| format!("statement {s:?}"))
}

/// True when one statement denies every action on the bucket and all its
/// objects to everyone whenever `aws:SecureTransport` is false.
pub fn denies_insecure_transport(policy: &Value, bucket: &str) -> bool {
    let bucket_arn = format!("arn:aws:s3:::{bucket}");
    let objects_prefix = format!("{bucket_arn}/");
    statements(policy).into_iter().any(|st| {
        // A NotPrincipal Deny exempts someone: it must be everyone.
        if !effect_is(st, "Deny")
            || st.get("NotPrincipal").is_some()
            || !principal_is_everyone(st)
            || st.get("NotAction").is_some()
            || st.get("NotResource").is_some()
        {
            return false;
        }
        let all_actions = strings(st.get("Action")).iter().any(|a| a == "*" || a == "s3:*");
        let resources = strings(st.get("Resource"));
        let covers_bucket = resources
            .iter()
            .any(|r| r == &bucket_arn || covers_prefix(r, &bucket_arn));
        let covers_objects = resources.iter().any(|r| covers_prefix(r, &objects_prefix));
        // Exactly one condition, aws:SecureTransport = false: any other
        // condition would narrow the Deny.
        let insecure_only = match st.get("Condition") {
            Some(Value::Object(ops)) if ops.len() == 1 => ops.iter().all(|(op, keys)| {
                (op == "Bool" || op == "BoolIfExists")
                    && keys.as_object().is_some_and(|k| k.len() == 1)
                    && keys.get("aws:SecureTransport").is_some_and(|v| {
                        let vals = strings(Some(v));
                        vals.len() == 1 && vals[0].eq_ignore_ascii_case("false")
                    })
            }),
            _ => false,
        };
        all_actions && covers_bucket && covers_objects && insecure_only
    })
}

/// The statement `harden` adds for TLS-only access.
pub fn tls_only_statement(bucket: &str) -> Value {
    serde_json::json!({
        "Sid": TLS_ONLY_SID,
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
        "Condition": { "Bool": { "aws:SecureTransport": "false" } }
    })
}

/// The Sid of the statement `harden` adds.
pub const TLS_ONLY_SID: &str = "VaultlineDenyInsecureTransport";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(statements: Value) -> Value {
        json!({ "Version": "2012-10-17", "Statement": statements })
    }

    #[test]
    fn public_principals_and_restricting_conditions() {
        let allow = |principal: Value, condition: Option<Value>| {
            let mut st = json!({"Sid": "S", "Effect": "Allow", "Principal": principal,
                                "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"});
            if let Some(c) = condition {
                st["Condition"] = c;
            }
            policy(json!([st]))
        };
        assert_eq!(
            public_statements(&allow(json!("*"), None)),
            vec!["statement \"S\""]
        );
        assert_eq!(public_statements(&allow(json!({"AWS": "*"}), None)).len(), 1);
        assert_eq!(
            public_statements(&allow(json!({"AWS": ["arn:x", "*"]}), None)).len(),
            1
        );
        assert!(public_statements(&allow(json!({"AWS": "arn:aws:iam::1:root"}), None)).is_empty());
        assert!(public_statements(&allow(json!({"Service": "logging.s3.amazonaws.com"}), None)).is_empty());
        // Fixed source IP: restricted. Wildcard or negated: still public.
        let ip = |op: &str, v: &str| Some(json!({ op: { "aws:SourceIp": v } }));
        assert!(public_statements(&allow(json!("*"), ip("IpAddress", "10.0.0.0/8"))).is_empty());
        assert_eq!(
            public_statements(&allow(json!("*"), ip("NotIpAddress", "10.0.0.0/8"))).len(),
            1
        );
        let org = Some(json!({"StringLike": {"aws:PrincipalOrgID": "o-*"}}));
        assert_eq!(public_statements(&allow(json!("*"), org)).len(), 1);
        let ifexists = Some(json!({"StringEqualsIfExists": {"aws:SourceVpc": "vpc-1"}}));
        assert_eq!(
            public_statements(&allow(json!("*"), ifexists)).len(),
            1,
            "IfExists holds without the key"
        );
        let everywhere = ip("IpAddress", "0.0.0.0/0");
        assert_eq!(
            public_statements(&allow(json!("*"), everywhere)).len(),
            1,
            "0.0.0.0/0 is public"
        );
        let tls = Some(json!({"Bool": {"aws:SecureTransport": "true"}}));
        assert_eq!(
            public_statements(&allow(json!("*"), tls)).len(),
            1,
            "TLS does not make it private"
        );
        // A lone statement object, and a Deny, are handled.
        let lone = json!({"Statement": {"Effect": "Allow", "Principal": "*", "Action": "s3:*"}});
        assert_eq!(public_statements(&lone), vec!["statement 1"]);
        let deny = policy(json!([{"Effect": "Deny", "Principal": "*", "Action": "s3:*"}]));
        assert!(public_statements(&deny).is_empty());
    }

    #[test]
    fn tls_only_needs_the_whole_deny() {
        let good = policy(json!([tls_only_statement("b")]));
        assert!(denies_insecure_transport(&good, "b"));
        assert!(!denies_insecure_transport(&good, "other"));
        let objects_only = policy(json!([{"Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": "arn:aws:s3:::b/*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]));
        assert!(
            !denies_insecure_transport(&objects_only, "b"),
            "the bucket itself is not covered"
        );
        let wildcard = policy(
            json!([{"Effect": "Deny", "Principal": {"AWS": "*"}, "Action": "*",
            "Resource": "arn:aws:s3:::b*", "Condition": {"Bool": {"aws:SecureTransport": false}}}]),
        );
        assert!(denies_insecure_transport(&wildcard, "b"));
        let some_actions = policy(
            json!([{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]),
        );
        assert!(!denies_insecure_transport(&some_actions, "b"));
        let allow_http = policy(json!([{"Effect": "Allow", "Principal": "*", "Action": "s3:*",
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]));
        assert!(!denies_insecure_transport(&allow_http, "b"));
        let text_only = policy(
            json!([{"Sid": "aws:SecureTransport false Deny s3:*", "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::1:root"}, "Action": "s3:*", "Resource": "*"}]),
        );
        assert!(
            !denies_insecure_transport(&text_only, "b"),
            "matching text is not enough"
        );
        let some_objects = policy(json!([{"Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/a*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]));
        assert!(
            !denies_insecure_transport(&some_objects, "b"),
            "only keys starting with a"
        );
        let exempting = policy(
            json!([{"Effect": "Deny", "NotPrincipal": {"AWS": "arn:aws:iam::1:root"},
            "Action": "s3:*", "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]),
        );
        assert!(
            !denies_insecure_transport(&exempting, "b"),
            "NotPrincipal exempts someone"
        );
        let narrowed = policy(json!([{"Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": ["arn:aws:s3:::b", "arn:aws:s3:::b/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"},
                          "StringEquals": {"aws:SourceVpce": "vpce-1"}}}]));
        assert!(
            !denies_insecure_transport(&narrowed, "b"),
            "another condition narrows the Deny"
        );
    }
}
