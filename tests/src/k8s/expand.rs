//! What the kubelet and the cluster fill in before a container runs, done
//! on text: `$(VAR)` expansion by Kubernetes' rules, the cluster's DNS
//! names replaced by the rehearsal's addresses, and paths under a
//! container's mounts mapped into the pod's directory (the rehearsal has
//! no mount namespaces). Used by [`super::pod`].

use std::collections::BTreeMap;

/// Kubernetes' expansion of `$(NAME)` in env values, command and args:
/// a defined name is replaced, an undefined one is left as written,
/// `$$` is one `$`, any other `$` stays.
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && i + 1 < b.len() {
            if b[i + 1] == b'$' {
                out.push('$');
                i += 2;
                continue;
            }
            if b[i + 1] == b'(' {
                if let Some(close) = s[i + 2..].find(')') {
                    let name = &s[i + 2..i + 2 + close];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(&s[i..i + 3 + close]),
                    }
                    i += 3 + close;
                    continue;
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn host_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'.'
}

/// Replace every host name that `names` knows, where it stands as a host
/// (a whole name followed by `:` and a port), by its address: what the
/// cluster's DNS would answer.
pub fn resolve(s: &str, names: &BTreeMap<String, String>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < b.len() {
        if host_char(b[i]) && (i == 0 || !host_char(b[i - 1])) {
            let mut j = i;
            while j < b.len() && host_char(b[j]) {
                j += 1;
            }
            let is_host = j + 1 < b.len() && b[j] == b':' && b[j + 1].is_ascii_digit();
            match names.get(&s[i..j]) {
                Some(addr) if is_host => out.push_str(addr),
                _ => out.push_str(&s[i..j]),
            }
            i = j;
            continue;
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

fn path_start(c: u8) -> bool {
    matches!(c, b' ' | b'=' | b'"' | b'\'' | b',' | b'\n' | b'\t' | b'[')
}

fn path_end(c: u8) -> bool {
    path_start(c) || matches!(c, b'/' | b']')
}

/// Map every path under a mount point (`(container path, host path)`,
/// longest first wins) to the host. A path counts where it starts the text
/// or follows a space, `=`, a quote, `,` or `[`, and ends at `/`, a
/// delimiter or the end.
pub fn map_paths(s: &str, mounts: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = mounts.iter().collect();
    sorted.sort_by_key(|(c, _)| std::cmp::Reverse(c.len()));
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'outer: while i < b.len() {
        if b[i] == b'/' && (i == 0 || path_start(b[i - 1])) {
            for (c, h) in &sorted {
                let end = i + c.len();
                if s[i..].starts_with(c.as_str()) && (end == b.len() || path_end(b[end])) {
                    out.push_str(h);
                    i = end;
                    continue 'outer;
                }
            }
        }
        let ch = s[i..].chars().next().expect("in bounds");
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expansion_follows_kubernetes() {
        let v = vars(&[("POD_IP", "10.0.0.7"), ("POD_NAME", "web-0")]);
        assert_eq!(expand("$(POD_IP):50051", &v), "10.0.0.7:50051");
        assert_eq!(expand("$(POD_NAME).$(POD_NAME)", &v), "web-0.web-0");
        // Undefined: left as written (Kubernetes does the same).
        assert_eq!(
            expand("x.$(POD_NAMESPACE).svc", &v),
            "x.$(POD_NAMESPACE).svc"
        );
        assert_eq!(expand("$$(POD_IP) $ $(", &v), "$(POD_IP) $ $(");
    }

    #[test]
    fn only_hosts_are_resolved() {
        let names = vars(&[
            ("etcd-0.etcd-peer", "127.0.15.10"),
            ("console-svc", "127.0.15.200"),
        ]);
        assert_eq!(
            resolve(
                "http://etcd-0.etcd-peer:2379,http://etcd-1.etcd-peer:2379",
                &names
            ),
            "http://127.0.15.10:2379,http://etcd-1.etcd-peer:2379"
        );
        assert_eq!(
            resolve("http://console-svc:50051", &names),
            "http://127.0.15.200:50051"
        );
        // A binary or a path with the same word is not a host.
        assert_eq!(
            resolve("/usr/local/bin/console-svc serve", &names),
            "/usr/local/bin/console-svc serve"
        );
        assert_eq!(resolve("console-svc-0:1", &names), "console-svc-0:1");
    }

    #[test]
    fn paths_under_mounts_are_mapped() {
        let m = vec![
            ("/etc/porthole".to_string(), "/tmp/p/etc".to_string()),
            (
                "/etc/porthole/sealing".to_string(),
                "/tmp/p/key".to_string(),
            ),
        ];
        assert_eq!(map_paths("/etc/porthole/sealing/key", &m), "/tmp/p/key/key");
        assert_eq!(
            map_paths("secret_key_file = \"/etc/porthole/x\"", &m),
            "secret_key_file = \"/tmp/p/etc/x\""
        );
        assert_eq!(
            map_paths("--config=/etc/porthole", &m),
            "--config=/tmp/p/etc"
        );
        // Not under a mount, or only a prefix of a name.
        assert_eq!(
            map_paths("/etc/portholes /var/etc/porthole", &m),
            "/etc/portholes /var/etc/porthole"
        );
    }
}
