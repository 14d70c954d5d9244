//! S3 object reads made with an instance role's credentials (the session token its IMDS
//! serves) are held to the role's policies, inline and attached, as IAM would: allowed by an
//! `Allow` (with `${aws:userid}` standing for `<role id>:<instance id>`), refused by an explicit
//! `Deny` over an allow, refused when nothing allows; GetObject and HeadObject alike. Requests
//! with the account's own credentials are not checked.

#![allow(clippy::unwrap_used)] // Helpers of these tests fail the test when a step fails.

mod common;

use std::time::Duration;

use common::Aws;
use flotilla_emulator::control::BootState;
use reqwest::Method;

const IAM: &str = "2010-05-08";

/// A role with `policy` inline and `managed` attached, in an instance profile; one instance of
/// it booted; the session token its IMDS serves and the role's id.
async fn instance_with_role(aws: &Aws, policy: &str, managed: &str) -> (String, String, String) {
    aws.instant_states().await;
    let role = format!("reader-{}", aws.key());
    let trust = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"ec2.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#;
    let created = aws
        .query(
            "iam",
            IAM,
            "CreateRole",
            &[("RoleName", &role), ("AssumeRolePolicyDocument", trust)],
        )
        .await
        .ok();
    let role_id = created.expect_value("RoleId");
    aws.query(
        "iam",
        IAM,
        "PutRolePolicy",
        &[("RoleName", &role), ("PolicyName", "inline"), ("PolicyDocument", policy)],
    )
    .await
    .ok();
    let arn = aws
        .query(
            "iam",
            IAM,
            "CreatePolicy",
            &[("PolicyName", &format!("managed-{}", aws.key())), ("PolicyDocument", managed)],
        )
        .await
        .ok()
        .expect_value("Arn");
    aws.query("iam", IAM, "AttachRolePolicy", &[("RoleName", &role), ("PolicyArn", &arn)])
        .await
        .ok();
    aws.query("iam", IAM, "CreateInstanceProfile", &[("InstanceProfileName", &role)]).await.ok();
    aws.query(
        "iam",
        IAM,
        "AddRoleToInstanceProfile",
        &[("InstanceProfileName", &role), ("RoleName", &role)],
    )
    .await
    .ok();
    let ids = aws
        .launch(
            1,
            &[
                ("InstanceType", "c7g.large"),
                ("IamInstanceProfile.Name", &role),
                ("UserData", "ZXhpdCAwCg=="), // "exit 0\n"
            ],
        )
        .await;
    let booted = aws
        .emulator
        .wait_booted(&ids[0], Duration::from_secs(20), |b| b.state != BootState::Failed)
        .await
        .expect("booted");
    // The credentials, read the way an SDK's default chain reads them.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let base = &booted.imds_endpoint;
    let imds_token = http
        .put(format!("{base}/latest/api/token"))
        .header("X-aws-ec2-metadata-token-ttl-seconds", "60")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = |path: String| {
        let request =
            http.get(format!("{base}{path}")).header("X-aws-ec2-metadata-token", &imds_token);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    let name = get("/latest/meta-data/iam/security-credentials/".to_owned()).await;
    let credentials: serde_json::Value = serde_json::from_str(
        &get(format!("/latest/meta-data/iam/security-credentials/{name}")).await,
    )
    .unwrap();
    let token = credentials["Token"].as_str().unwrap().to_owned();
    (ids[0].clone(), role_id, token)
}

#[tokio::test]
async fn role_credentials_read_only_what_the_roles_policies_allow() {
    let aws = Aws::new("rolepolicy");
    let bucket = format!("role-reads-{}", aws.key().to_lowercase());
    let policy = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "s3:GetObject", "Resource": [
                format!("arn:aws:s3:::{bucket}/open/*"),
                format!("arn:aws:s3:::{bucket}/identities/${{aws:userid}}.json"),
            ]},
            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/open/denied.txt")},
        ]
    })
    .to_string();
    let managed = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": format!("arn:aws:s3:::{bucket}/managed.txt")}]
    })
    .to_string();
    let (instance, role_id, token) = instance_with_role(&aws, &policy, &managed).await;
    assert!(!token.is_empty());

    aws.s3(Method::PUT, &format!("/{bucket}"), b"").await.ok();
    let own = format!("identities/{role_id}:{instance}.json");
    let other = format!("identities/{role_id}:i-0000000000000dead.json");
    let keys = ["open/a.txt", "open/denied.txt", "managed.txt", "closed.txt", &own, &other];
    for key in keys {
        aws.s3(Method::PUT, &format!("/{bucket}/{key}"), key.as_bytes()).await.ok();
    }

    for method in [Method::GET, Method::HEAD] {
        // Allowed: inline, attached, and the instance's own identity.
        for key in ["open/a.txt", "managed.txt", own.as_str()] {
            let reply = aws.s3_as_role(method.clone(), &format!("/{bucket}/{key}"), &token).await;
            assert_eq!(reply.status, 200, "{method} {key}: {}", reply.body);
            if method == Method::GET {
                assert_eq!(reply.body, key);
            }
        }
        // Refused: an explicit deny over the allow, and what nothing allows (another
        // instance's identity among them).
        for (key, why) in [
            ("open/denied.txt", "with an explicit deny"),
            ("closed.txt", "because no identity-based policy allows the s3:GetObject action"),
            (other.as_str(), "because no identity-based policy allows the s3:GetObject action"),
        ] {
            let reply = aws.s3_as_role(method.clone(), &format!("/{bucket}/{key}"), &token).await;
            assert_eq!(reply.status, 403, "{method} {key}: {}", reply.body);
            if method == Method::GET {
                assert!(reply.body.contains("<Code>AccessDenied</Code>"), "{}", reply.body);
                let resource = format!("on resource: arn:aws:s3:::{bucket}/{key} {why}");
                assert!(reply.body.contains(&resource), "{resource}: {}", reply.body);
            }
        }
    }
    // A session of an instance that does not exist is refused.
    let reply = aws
        .s3_as_role(
            Method::GET,
            &format!("/{bucket}/open/a.txt"),
            &token.replace(&instance, "i-0000000000000dead"),
        )
        .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("which does not exist"), "{}", reply.body);
    // The account's own credentials are not held to the role.
    let reply = aws.s3(Method::GET, &format!("/{bucket}/open/denied.txt"), b"").await.ok();
    assert_eq!(reply.body, "open/denied.txt");
}
