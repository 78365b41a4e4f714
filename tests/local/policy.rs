//! `vaultline policy iam` prints policies from the configuration: with a
//! full key ARN it needs no AWS credentials and sends nothing anywhere.

use std::fs;

use crate::util::Fixture;

#[test]
fn policy_iam_with_a_key_arn_needs_no_aws_access() {
    let f = Fixture::new("");
    let arn = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    // Every endpoint points at a port nothing listens on: any request
    // would fail the command.
    fs::write(
        &f.config,
        format!(
            "[agent]\nhost = \"testhost\"\nstate-dir = {:?}\n\n[repository]\ntype = \"s3\"\nbucket = \
             \"acme-backups\"\nendpoint = \"https://127.0.0.1:9\"\npath-style = true\n\n[aws]\nregion = \
             \"eu-west-1\"\nmax-attempts = 1\ntimeout-secs = 2\n\n[key]\nprovider = \"kms\"\nkey-id = \"{arn}\"\n\
             endpoint = \"https://127.0.0.1:9\"\n\n[[jobs]]\nname = \"etc\"\npaths = [\"/etc\"]\n",
            f.state().display().to_string()
        ),
    )
    .unwrap();
    for role in ["backup", "restore", "admin"] {
        let run = f.run(&["policy", "iam", "--role", role]);
        assert_eq!(run.code, 0, "--role {role}: {}", run.stderr);
        assert!(run.stdout.contains(arn), "--role {role}: {}", run.stdout);
    }
}
