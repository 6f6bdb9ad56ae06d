//! What a Secret's kubeconfig key holds: a usable context, or a [`Problem`] that
//! names the Secret and the defect, never the content.

use kube::config::Kubeconfig;

use crate::cluster::kubeconfig::{self, KubeconfigError, KubeconfigPolicy};

/// Why a Secret gives no cluster; the reason of its Warning Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Reason {
    /// The data key is absent or empty.
    Missing,
    /// The content is not a usable kubeconfig (syntax, shape, context, TLS material).
    Invalid,
    /// The kubeconfig asks for something the policy refuses (exec plugin, local file).
    Refused,
}

impl Reason {
    /// The Event reason, in Kubernetes' `PascalCase`.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => super::REASON_MISSING,
            Reason::Invalid => super::REASON_INVALID,
            Reason::Refused => super::REASON_REFUSED,
        }
    }
}

/// A Secret that gives no cluster, and why. The message names the Secret, the key
/// and the defect (a position, a field name, a context name), never a value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Problem {
    pub(super) reason: Reason,
    pub(super) message: String,
}

impl Problem {
    pub(super) fn invalid(message: String) -> Self {
        Problem {
            reason: Reason::Invalid,
            message,
        }
    }
}

impl From<KubeconfigError> for Problem {
    fn from(error: KubeconfigError) -> Self {
        let reason = match error {
            KubeconfigError::Refused { .. } | KubeconfigError::Endpoint { .. } => Reason::Refused,
            _ => Reason::Invalid,
        };
        Problem {
            reason,
            message: error.to_string(),
        }
    }
}

/// A vetted kubeconfig, the context to use and its fingerprint.
pub(super) struct Plan {
    pub(super) kubeconfig: Kubeconfig,
    pub(super) context: String,
    pub(super) fingerprint: u64,
}

/// Reads the kubeconfig held under `key` (`data` is that value, if present): parses
/// it, vets it against `policy` and resolves `context` (the current context for
/// `None`).
pub(super) fn plan(
    data: Option<&[u8]>,
    key: &str,
    context: Option<&str>,
    policy: &KubeconfigPolicy,
    origin: &str,
) -> Result<Plan, Problem> {
    let missing = |what: &str| Problem {
        reason: Reason::Missing,
        message: format!("{origin}: {what}"),
    };
    let data = data.ok_or_else(|| missing(&format!("has no key {key:?}")))?;
    if data.iter().all(u8::is_ascii_whitespace) {
        return Err(missing(&format!("key {key:?} is empty")));
    }
    let mut kubeconfig = kubeconfig::parse(data, origin)?;
    kubeconfig::vet(&mut kubeconfig, policy, origin)?;
    let context = match context {
        Some(name) => name.to_owned(),
        None => kubeconfig
            .current_context
            .clone()
            .filter(|name| !name.is_empty())
            .ok_or_else(|| {
                Problem::invalid(format!(
                    "{origin}: no current-context is set (or configure the context to use)"
                ))
            })?,
    };
    let fingerprint = kubeconfig::fingerprint(&kubeconfig, &context)
        .ok_or_else(|| Problem::invalid(format!("{origin}: no usable context named {context:?}")))?;
    Ok(Plan {
        kubeconfig,
        context,
        fingerprint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "pl4n-t3st-t0ken";

    fn config(user: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: a\nclusters:\n- name: a\n  cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: a\n  context:\n    cluster: a\n    user: u\n- name: b\n  context:\n    cluster: a\n    user: u\n    namespace: other\nusers:\n- name: u\n  user:\n{user}"
        )
    }

    fn plan_of(data: Option<&str>, context: Option<&str>) -> Result<Plan, Problem> {
        plan(
            data.map(str::as_bytes),
            "kubeconfig",
            context,
            &KubeconfigPolicy::untrusted(),
            "Secret ns/s",
        )
    }

    #[test]
    fn missing_and_empty_keys() {
        let err = plan_of(None, None).err().expect("missing");
        assert_eq!(err.reason, Reason::Missing);
        assert_eq!(err.message, "Secret ns/s: has no key \"kubeconfig\"");
        let err = plan_of(Some(" \n"), None).err().expect("empty");
        assert_eq!(err.reason, Reason::Missing);
        assert!(err.message.contains("is empty"), "{}", err.message);
    }

    #[test]
    fn malformed_content_is_invalid_and_not_quoted() {
        let broken = format!("users: [ {{ token: {TOKEN} ");
        let err = plan_of(Some(&broken), None).err().expect("malformed");
        assert_eq!(err.reason, Reason::Invalid);
        assert!(!err.message.contains(TOKEN), "{}", err.message);
    }

    #[test]
    fn contexts_are_resolved_and_fingerprinted() {
        let text = config(&format!("    token: {TOKEN}\n"));
        let current = plan_of(Some(&text), None).expect("valid");
        assert_eq!(current.context, "a");
        let other = plan_of(Some(&text), Some("b")).expect("valid");
        assert_ne!(current.fingerprint, other.fingerprint, "namespaces differ");
        let err = plan_of(Some(&text), Some("nope")).err().expect("no context");
        assert_eq!(err.reason, Reason::Invalid);
        assert!(err.message.contains("\"nope\""), "{}", err.message);
        let unset = text.replace("current-context: a\n", "");
        let err = plan_of(Some(&unset), None).err().expect("no current context");
        assert!(err.message.contains("current-context"), "{}", err.message);
    }

    #[test]
    fn exec_is_refused_by_default() {
        let exec = "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/true\n";
        let err = plan_of(Some(&config(exec)), None).err().expect("refused");
        assert_eq!(err.reason, Reason::Refused);
        assert!(err.message.contains("exec credential plugin"), "{}", err.message);
        let allowed = plan(
            Some(config(exec).as_bytes()),
            "kubeconfig",
            None,
            &KubeconfigPolicy {
                allow_exec: true,
                ..KubeconfigPolicy::untrusted()
            },
            "o",
        );
        assert!(allowed.is_ok());
    }

    proptest::proptest! {
        #![proptest_config(crate::providers::fuzz::config())]

        /// Secret content as it comes: absent, empty, a kubeconfig, or anything.
        #[test]
        fn p05_fuzz_secret_content(
            data in proptest::option::weighted(0.9, crate::providers::fuzz::kubeconfig_bytes()),
            context in proptest::option::of("[a-c]"),
            fenced in proptest::prelude::any::<bool>(),
        ) {
            let mut policy = KubeconfigPolicy::untrusted();
            if fenced {
                policy = policy.endpoints(crate::cluster::kubeconfig::EndpointPolicy::deny_local());
            }
            match plan(data.as_deref(), "kubeconfig", context.as_deref(), &policy, "Secret ns/s") {
                Ok(plan) => {
                    proptest::prop_assert_eq!(
                        kubeconfig::fingerprint(&plan.kubeconfig, &plan.context),
                        Some(plan.fingerprint)
                    );
                }
                Err(problem) => crate::providers::fuzz::assert_no_marker("plan", &problem.message),
            }
        }
    }
}
