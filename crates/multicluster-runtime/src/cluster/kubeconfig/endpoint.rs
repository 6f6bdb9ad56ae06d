//! Which servers a kubeconfig from outside the program may make the controller
//! connect to.
//!
//! Whoever writes a kubeconfig Secret, a ClusterProfile or a Cluster API object
//! chooses the `server` the controller connects to, from inside the controller's
//! network. An [`EndpointPolicy`] limits that choice to an allow-list of hosts and
//! address ranges, and refuses a deny-list (see [`EndpointPolicy::deny_local`] for the
//! documented example: loopback, link-local and cloud metadata addresses).
//!
//! # What is checked, and where
//!
//! [`vet`](super::vet) checks the host of the URL as written. An IP address is
//! matched against the address ranges ([`EndpointRule::Net`]); a DNS name against
//! the host rules ([`EndpointRule::Host`], [`EndpointRule::Suffix`]).
//!
//! A name proves nothing about where it leads, so the provider's clients check
//! again where it matters: built by
//! [`ClientOptions::build_checked`](crate::cluster::ClientOptions::build_checked),
//! a client refuses to connect when the server's host, or any address its name
//! resolves to at that moment, is denied ([`EndpointPolicy::denies_address`]). The
//! check runs on every new connection, so a name that changes its answer after
//! vetting (DNS rebinding) is caught too.
//!
//! Hosts that are neither a canonical IP address nor a DNS name are refused whenever
//! the policy has a rule: forms the system resolver reads as an IP address
//! (`2852039166`, `0xa9.0xfe.0xa9.0xfe`, `169.254.43518`), and hosts with bytes no
//! DNS name has, such as IPv6 zone IDs (`[fe80::1%2]`, `[::ffff:169.254.169.254%1]`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;

/// One entry of an allow-list or deny-list of an [`EndpointPolicy`].
///
/// Parsed from text ([`FromStr`]): `10.0.0.0/8` or `fd00::/8` (a range), `10.1.2.3`
/// or `::1` (one address), `*.fleet.example.com` (every name under that domain, not
/// the domain itself), `api.example.com` (that name).
///
/// ```
/// use multicluster_runtime::providers::kubeconfig::EndpointRule;
///
/// let rules: Vec<EndpointRule> = ["10.0.0.0/8", "::1", "*.fleet.example", "api.example"]
///     .iter()
///     .map(|text| text.parse().unwrap())
///     .collect();
/// assert_eq!(rules[1].to_string(), "::1/128");
/// assert!("10.0.0.0/33".parse::<EndpointRule>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointRule {
    /// IP addresses in this range. Matches IP literals only, never DNS names.
    Net(IpNet),
    /// This DNS name (lower case, without a trailing dot).
    Host(String),
    /// Every DNS name ending in `.` and this domain (lower case, without a trailing
    /// dot); written `*.domain`.
    Suffix(String),
}

/// Text that is not an [`EndpointRule`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an endpoint rule: {text:?} (expected an address, a CIDR range, a host name or *.domain)")]
pub struct EndpointRuleError {
    /// The text given (operator configuration, not a credential).
    pub text: String,
}

impl FromStr for EndpointRule {
    type Err = EndpointRuleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || EndpointRuleError {
            text: text.to_owned(),
        };
        let trimmed = text.trim();
        if trimmed.contains('/') {
            let net: IpNet = trimmed.parse().map_err(|_| error())?;
            return Ok(EndpointRule::Net(canonical_net(net.trunc())));
        }
        if let Ok(address) = trimmed
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            return Ok(EndpointRule::Net(IpNet::from(address.to_canonical())));
        }
        let (suffix, name) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(error());
        }
        Ok(if suffix {
            EndpointRule::Suffix(name)
        } else {
            EndpointRule::Host(name)
        })
    }
}

/// `net` with an IPv4-mapped IPv6 range (`::ffff:169.254.0.0/112`) written as the
/// IPv4 range it maps (`169.254.0.0/16`), as hosts are compared: otherwise such a
/// rule would match no host at all.
fn canonical_net(net: IpNet) -> IpNet {
    const MAPPED_PREFIX: u8 = 96;
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= MAPPED_PREFIX => match v6.network().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - MAPPED_PREFIX)
                .map(IpNet::V4)
                .unwrap_or(net),
            None => net,
        },
        other => other,
    }
}

impl fmt::Display for EndpointRule {
    /// The rule as it would be parsed back: `10.0.0.0/8`, `api.example`,
    /// `*.fleet.example`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndpointRule::Net(net) => write!(f, "{net}"),
            EndpointRule::Host(name) => f.write_str(name),
            EndpointRule::Suffix(domain) => write!(f, "*.{domain}"),
        }
    }
}

impl EndpointRule {
    fn matches(&self, host: &Host) -> bool {
        match (self, host) {
            (EndpointRule::Net(net), Host::Ip(address)) => net.contains(address),
            (EndpointRule::Host(name), Host::Name(host)) => name == host,
            (EndpointRule::Suffix(domain), Host::Name(host)) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|head| head.ends_with('.')),
            _ => false,
        }
    }
}

/// The host part of a URL, as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(address) => write!(f, "{address}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// Which servers kubeconfigs from outside the program may point at: every server
/// must match an entry of the allow-list, if there is one, and no entry of the
/// deny-list. The default allows every server.
///
/// Applied by [`vet`](super::vet) to the `server` (and, where allowed, the
/// `proxy-url`) of every cluster of a kubeconfig from a Secret, a ClusterProfile or
/// a Cluster API object. See the [module docs](self) for what is and is not checked.
///
/// ```
/// use multicluster_runtime::providers::kubeconfig::EndpointPolicy;
///
/// // Only the fleet's private range and domain, never metadata or loopback addresses:
/// let policy = EndpointPolicy::deny_local()
///     .allow(["10.0.0.0/8", "*.fleet.example.com"])
///     .unwrap();
/// assert!(policy.check_server("https://10.1.2.3:6443").is_ok());
/// assert!(policy.check_server("https://eu-1.fleet.example.com").is_ok());
/// let refused = policy.check_server("https://169.254.169.254").unwrap_err();
/// assert_eq!(refused.to_string(), "host is in the deny-list entry 169.254.0.0/16");
/// assert!(policy.check_server("https://internal.corp").is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    allow: Vec<EndpointRule>,
    deny: Vec<EndpointRule>,
}

/// Why an [`EndpointPolicy`] refuses a URL.
///
/// Its text names the rule and never the host, nor any other part of the URL: the
/// URL is the kubeconfig writer's, and refusals reach Events and logs that more
/// people read than the Secret (x06, issue 22). The host is in the fields, for code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointRefusal {
    /// The URL cannot be parsed, or has no host.
    #[error("is not a URL with a host")]
    NotAUrl,
    /// The host looks like an IP address in a form that resolvers accept but that is
    /// not canonical (decimal, octal, hexadecimal, shortened).
    #[error("host is not a canonical IP address or DNS name")]
    Ambiguous {
        /// The host as written (not a credential: the rest of the URL is left out).
        host: String,
    },
    /// The host matches an entry of the deny-list.
    #[error("host is in the deny-list entry {rule}")]
    Denied {
        /// The host.
        host: String,
        /// The deny-list entry it matches.
        rule: EndpointRule,
    },
    /// There is an allow-list and the host matches none of its entries.
    #[error("host is not in the allow-list ({entries} entries)")]
    NotAllowed {
        /// The host.
        host: String,
        /// How many entries the allow-list has.
        entries: usize,
    },
}

impl EndpointPolicy {
    /// Every server allowed: no allow-list, no deny-list. The default.
    pub fn any() -> Self {
        EndpointPolicy::default()
    }

    /// The documented example deny-list: addresses a server outside the controller's
    /// host should never have, and that an attacker would aim at from inside it.
    ///
    /// | entry | what |
    /// |---|---|
    /// | `127.0.0.0/8`, `::1/128`, `localhost`, `*.localhost` | loopback: the controller's own pod |
    /// | `0.0.0.0/8`, `::/128` | "this host", which connects to loopback on Linux |
    /// | `169.254.0.0/16`, `fe80::/10` | link-local, including the cloud metadata address `169.254.169.254` |
    /// | `ip6-localhost`, `ip6-loopback` | loopback by the names Debian's `/etc/hosts` gives `::1` |
    /// | `fd00:ec2::254/128`, `instance-data` | the AWS metadata service over IPv6 and by name |
    /// | `168.63.129.16/32` | Azure's host endpoint (metadata, health, DNS) |
    /// | `100.100.100.200/32` | the Alibaba Cloud metadata service |
    /// | `metadata.google.internal`, `metadata` | the GCP metadata service by name |
    /// | `64:ff9b::/96` | NAT64: `64:ff9b::a9fe:a9fe` reaches `169.254.169.254` through a NAT64 gateway |
    ///
    /// Private ranges (`10.0.0.0/8`, …) are not in it: fleets often live there.
    /// Add them with [`deny`](Self::deny) where they do not. In an IPv6-only
    /// cluster that reaches IPv4 servers through NAT64, the last entry refuses them
    /// all: build the list from [`denied`](Self::denied) without it.
    pub fn deny_local() -> Self {
        const LOCAL: [&str; 17] = [
            "127.0.0.0/8",
            "::1/128",
            "localhost",
            "*.localhost",
            "ip6-localhost",
            "ip6-loopback",
            "instance-data",
            "168.63.129.16/32",
            "64:ff9b::/96",
            "0.0.0.0/8",
            "::/128",
            "169.254.0.0/16",
            "fe80::/10",
            "fd00:ec2::254/128",
            "100.100.100.200/32",
            "metadata.google.internal",
            "metadata",
        ];
        EndpointPolicy {
            allow: Vec::new(),
            deny: LOCAL
                .iter()
                .map(|text| text.parse().expect("the built-in rules parse"))
                .collect(),
        }
    }

    /// Adds entries to the allow-list (see [`EndpointRule`] for their syntax). Once
    /// the allow-list has an entry, only servers matching one are allowed.
    ///
    /// # Errors
    /// [`EndpointRuleError`] for the first entry that does not parse.
    pub fn allow<I>(mut self, rules: I) -> Result<Self, EndpointRuleError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for rule in rules {
            self.allow.push(rule.as_ref().parse()?);
        }
        Ok(self)
    }

    /// Adds entries to the deny-list (see [`EndpointRule`] for their syntax). A
    /// server matching one is refused, even if the allow-list has it too.
    ///
    /// # Errors
    /// [`EndpointRuleError`] for the first entry that does not parse.
    pub fn deny<I>(mut self, rules: I) -> Result<Self, EndpointRuleError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        for rule in rules {
            self.deny.push(rule.as_ref().parse()?);
        }
        Ok(self)
    }

    /// Adds one parsed entry to the allow-list.
    #[must_use]
    pub fn allow_rule(mut self, rule: EndpointRule) -> Self {
        self.allow.push(rule);
        self
    }

    /// Adds one parsed entry to the deny-list.
    #[must_use]
    pub fn deny_rule(mut self, rule: EndpointRule) -> Self {
        self.deny.push(rule);
        self
    }

    /// The allow-list; empty means every server not denied.
    pub fn allowed(&self) -> &[EndpointRule] {
        &self.allow
    }

    /// The deny-list.
    pub fn denied(&self) -> &[EndpointRule] {
        &self.deny
    }

    /// Whether the policy allows every server.
    pub fn allows_any(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// The deny-list entry that refuses `address`, an address a server's name
    /// resolved to (IPv4-mapped IPv6 addresses are compared as IPv4).
    ///
    /// Only the deny-list applies: a name was admitted by the allow-list as written
    /// (see [`check_server`](Self::check_server)), and the addresses it resolves to
    /// must then avoid every denied range. Clients built with
    /// [`ClientOptions::build_checked`](crate::cluster::ClientOptions::build_checked)
    /// ask this of every address they connect to.
    pub fn denies_address(&self, address: IpAddr) -> Option<&EndpointRule> {
        let host = Host::Ip(address.to_canonical());
        self.deny.iter().find(|rule| rule.matches(&host))
    }

    /// Checks the host of `url` (a kubeconfig's `server` or `proxy-url`).
    ///
    /// # Errors
    /// [`EndpointRefusal`] saying which rule refuses the host.
    pub fn check_server(&self, url: &str) -> Result<(), EndpointRefusal> {
        if self.allows_any() {
            return Ok(());
        }
        let host = host_of(url)?;
        if let Some(rule) = self.deny.iter().find(|rule| rule.matches(&host)) {
            return Err(EndpointRefusal::Denied {
                host: host.to_string(),
                rule: rule.clone(),
            });
        }
        if !self.allow.is_empty() && !self.allow.iter().any(|rule| rule.matches(&host)) {
            return Err(EndpointRefusal::NotAllowed {
                host: host.to_string(),
                entries: self.allow.len(),
            });
        }
        Ok(())
    }
}

/// The host of `url`: an IP address in canonical form (IPv4-mapped IPv6 addresses
/// as IPv4), or a DNS name in lower case without a trailing dot.
fn host_of(url: &str) -> Result<Host, EndpointRefusal> {
    let uri: http::Uri = url.trim().parse().map_err(|_| EndpointRefusal::NotAUrl)?;
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or(EndpointRefusal::NotAUrl)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(address) = bare.parse::<IpAddr>() {
        return Ok(Host::Ip(address.to_canonical()));
    }
    // Only letters, digits, `-`, `_` and dots make a DNS name. Anything else (an
    // IPv6 zone ID such as `fe80::1%2`, a stray `:`) is no name the rules can match,
    // yet a resolver may still read an address out of it.
    let is_name_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if !bare.bytes().all(is_name_byte) {
        return Err(EndpointRefusal::Ambiguous {
            host: host.to_owned(),
        });
    }
    const LONGEST_NAME: usize = 253;
    if bare.len() > LONGEST_NAME + 1 {
        // Quoted in part: a refusal is logged and kept, and the host can be as
        // long as the writer likes.
        return Err(EndpointRefusal::Ambiguous {
            host: format!("{}… ({} bytes)", &bare[..32], bare.len()),
        });
    }
    let name = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
    // A last label of digits (or 0x…) is no top-level domain: resolvers read such a
    // host as an IPv4 address in one of inet_aton's forms.
    let last = name.rsplit('.').next().unwrap_or_default();
    let numeric = !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())));
    if name.is_empty() || numeric {
        return Err(EndpointRefusal::Ambiguous {
            host: host.to_owned(),
        });
    }
    Ok(Host::Name(name))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn refused(policy: &EndpointPolicy, url: &str) -> String {
        policy.check_server(url).expect_err(url).to_string()
    }

    #[test]
    fn the_local_deny_list_refuses_loopback_link_local_and_metadata() {
        let policy = EndpointPolicy::deny_local();
        for url in [
            "https://127.0.0.1:6443",
            "https://127.1.2.3",
            "https://[::1]:443",
            "https://[::ffff:169.254.169.254]",
            "https://169.254.169.254/latest/meta-data",
            "https://user:pass@169.254.169.254",
            "https://[fe80::1]",
            "https://[fd00:ec2::254]",
            "https://LOCALHOST.",
            "https://api.localhost",
            "http://metadata.google.internal",
            "https://0.0.0.0",
        ] {
            let text = refused(&policy, url);
            assert!(text.contains("deny-list entry"), "{url}: {text}");
            assert!(!text.contains("pass"), "{text}");
        }
        assert!(policy.check_server("https://10.0.0.1:6443").is_ok());
        assert!(policy.check_server("https://eu-1.example.com").is_ok());
        assert!(policy.check_server("https://notlocalhost").is_ok());
    }

    #[test]
    fn non_canonical_addresses_are_refused_when_there_are_rules() {
        let policy = EndpointPolicy::deny_local();
        for url in [
            "https://2852039166",
            "https://0xa9.0xfe.0xa9.0xfe",
            "https://169.254.43518",
            "https://0251.0376.0251.0376",
            "https://127.1",
        ] {
            assert!(refused(&policy, url).contains("not a canonical"), "{url}");
        }
        assert!(EndpointPolicy::any().check_server("https://127.1").is_ok());
    }

    #[test]
    fn an_allow_list_admits_only_its_entries() {
        let policy = EndpointPolicy::any()
            .allow(["10.0.0.0/8", "*.fleet.example", "api.example"])
            .unwrap();
        assert!(policy.check_server("https://10.9.8.7").is_ok());
        assert!(policy.check_server("https://eu.fleet.example:6443").is_ok());
        assert!(policy.check_server("https://api.example").is_ok());
        assert_eq!(
            refused(&policy, "https://fleet.example"),
            "host is not in the allow-list (3 entries)"
        );
        assert!(refused(&policy, "https://evilfleet.example").contains("allow-list"));
        assert!(refused(&policy, "https://11.0.0.1").contains("allow-list"));
        let both = policy.deny(["10.0.0.0/24"]).unwrap();
        assert!(refused(&both, "https://10.0.0.5").contains("deny-list entry 10.0.0.0/24"));
        assert_eq!(refused(&both, "not a url at all"), "is not a URL with a host");
    }

    #[test]
    fn x02_zone_ids_and_other_bytes_no_name_has_are_refused() {
        let policy = EndpointPolicy::deny_local();
        for url in [
            "https://[::ffff:169.254.169.254%1]",
            "https://[::1%1]:6443",
            "https://[fe80::1%2]",
            "https://[fe80::1%25eth0]",
        ] {
            let text = refused(&policy, url);
            assert!(text.contains("not a canonical"), "{url}: {text}");
        }
        // A rule of any kind turns the check on; no rule, no check (as before).
        let far = EndpointPolicy::any().deny(["192.0.2.0/24"]).unwrap();
        assert!(far.check_server("https://[fe80::1%2]").is_err());
        assert!(EndpointPolicy::any().check_server("https://[fe80::1%2]").is_ok());
    }

    #[test]
    fn x02_the_local_deny_list_covers_more_metadata_and_loopback_names() {
        let policy = EndpointPolicy::deny_local();
        for url in [
            "https://ip6-localhost",
            "https://ip6-loopback:6443",
            "https://instance-data",
            "https://168.63.129.16",
            "https://[fd00:ec2::254]",
            "https://[64:ff9b::a9fe:a9fe]",
        ] {
            assert!(refused(&policy, url).contains("deny-list entry"), "{url}");
        }
        // Resolved addresses are held to the same deny-list.
        for address in [
            "127.0.0.1",
            "::1",
            "169.254.169.254",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
        ] {
            let address: IpAddr = address.parse().unwrap();
            assert!(policy.denies_address(address).is_some(), "{address}");
        }
        assert_eq!(policy.denies_address("10.1.2.3".parse().unwrap()), None);
    }

    #[test]
    fn x02_mapped_ranges_are_rules_on_ipv4_as_hosts_are() {
        let rule = |text: &str| text.parse::<EndpointRule>().unwrap().to_string();
        assert_eq!(rule("::ffff:169.254.0.0/112"), "169.254.0.0/16");
        assert_eq!(rule("::ffff:10.1.2.3/128"), "10.1.2.3/32");
        assert_eq!(rule("::ffff:0:0/96"), "0.0.0.0/0");
        assert_eq!(rule("::/96"), "::/96");
        let policy = EndpointPolicy::any().deny(["::ffff:169.254.0.0/112"]).unwrap();
        for url in ["https://169.254.169.254", "https://[::ffff:169.254.169.254]"] {
            assert!(refused(&policy, url).contains("169.254.0.0/16"), "{url}");
        }
    }

    #[test]
    fn rules_parse_and_print() {
        let rule = |text: &str| text.parse::<EndpointRule>().map(|r| r.to_string());
        assert_eq!(rule("10.1.2.3/8").unwrap(), "10.0.0.0/8");
        assert_eq!(rule("[::1]").unwrap(), "::1/128");
        assert_eq!(rule("*.Fleet.Example.").unwrap(), "*.fleet.example");
        for bad in ["", "*.", "a..b", "10.0.0.0/40", "a b", "-/-", "é.example"] {
            assert!(rule(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// x08: whatever form a host takes (zone IDs, `inet_aton` forms, mapped and
        /// NAT64 addresses, oversized names), what `deny_local()` lets through is no
        /// address a resolver would read as local and no local name; with an
        /// allow-list, only what the list names; and refusals stay short.
        #[test]
        fn x08_fuzz_what_deny_local_allows_is_not_local(
            url in crate::providers::fuzz::server(),
            listed in any::<bool>(),
        ) {
            use crate::providers::fuzz::{is_local, is_local_name, lenient_addresses};
            let mut policy = EndpointPolicy::deny_local();
            if listed {
                policy = policy.allow(["10.0.0.0/8", "*.example", "*.localhost"]).expect("rules");
            }
            match policy.check_server(&url) {
                Err(refusal) => prop_assert!(refusal.to_string().len() <= 160, "{}", refusal),
                Ok(()) => {
                    let uri: http::Uri = url.trim().parse().expect("check_server parsed it");
                    let host = uri.host().expect("and found a host");
                    let read_as = lenient_addresses(host);
                    prop_assert!(!read_as.iter().copied().any(is_local), "{} reaches {:?}", url, read_as);
                    prop_assert!(!is_local_name(host), "{}", url);
                    if listed {
                        let ten: IpNet = "10.0.0.0/8".parse().expect("a range");
                        let in_ten = read_as.iter().any(|a| ten.contains(&a.to_canonical()));
                        let under_example = host.to_ascii_lowercase().trim_end_matches('.').ends_with(".example");
                        prop_assert!(in_ten || under_example, "{} is not on the allow-list", url);
                    }
                }
            }
        }

        // Any text as a URL, and as a rule: never a panic, and a refusal never
        // quotes the part of the URL before the host (where user information is).
        #[test]
        fn p05_fuzz_endpoint_rules(
            host in prop_oneof!["[a-z0-9.:\\[\\]-]{0,40}", crate::providers::fuzz::server()],
            secret in "[A-Z]{12}",
            rule in "\\PC{0,40}",
        ) {
            let policy = EndpointPolicy::deny_local();
            let url = format!("https://{secret}:{secret}@{host}/path");
            if let Err(refusal) = policy.check_server(&url) {
                prop_assert!(!refusal.to_string().contains(&secret));
            }
            let _ = rule.parse::<EndpointRule>();
            let _ = policy.check_server(&rule);
        }
    }
}
