//! Root volumes: RunInstances creates each with its mapping's type, size, IOPS and throughput,
//! as the AWS provider sends them (`/dev/sda1`, `Ebs.{VolumeSize,VolumeType,Iops,Throughput}`),
//! and DescribeVolumes reports them.

mod common;

use common::{Aws, values};

/// What a launch asks for and what DescribeVolumes must then report.
struct Case {
    volume_type: &'static str,
    size: &'static str,
    iops: Option<&'static str>,
    throughput: Option<&'static str>,
    /// `(iops, throughput)` reported: AWS's defaults where the launch gave none.
    reported: (Option<&'static str>, Option<&'static str>),
}

const CASES: [Case; 4] = [
    Case {
        volume_type: "io1",
        size: "100",
        iops: Some("5000"),
        throughput: None,
        reported: (Some("5000"), None),
    },
    Case {
        volume_type: "io2",
        size: "200",
        iops: Some("64000"),
        throughput: None,
        reported: (Some("64000"), None),
    },
    Case {
        volume_type: "gp3",
        size: "40",
        iops: Some("4000"),
        throughput: Some("250"),
        reported: (Some("4000"), Some("250")),
    },
    // gp3 without either: AWS's baseline, 3,000 IOPS and 125 MiB/s.
    Case {
        volume_type: "gp3",
        size: "8",
        iops: None,
        throughput: None,
        reported: (Some("3000"), Some("125")),
    },
];

#[tokio::test]
async fn root_volumes_keep_their_type_size_iops_and_throughput() {
    let aws = Aws::new("volumes");
    aws.instant_states().await;
    let mut launched = Vec::new();
    for case in &CASES {
        let mut params = vec![
            ("BlockDeviceMapping.1.DeviceName", "/dev/sda1"),
            ("BlockDeviceMapping.1.Ebs.VolumeSize", case.size),
            ("BlockDeviceMapping.1.Ebs.VolumeType", case.volume_type),
            ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
        ];
        if let Some(iops) = case.iops {
            params.push(("BlockDeviceMapping.1.Ebs.Iops", iops));
        }
        if let Some(throughput) = case.throughput {
            params.push(("BlockDeviceMapping.1.Ebs.Throughput", throughput));
        }
        let id = aws.launch(1, &params).await.remove(0);
        let reply = aws
            .ec2(
                "DescribeVolumes",
                &[("Filter.1.Name", "attachment.instance-id"), ("Filter.1.Value.1", &id)],
            )
            .await
            .ok();
        // One volume: its type, size, IOPS and throughput appear once in the answer (the
        // attachment repeats only ids, device and state).
        let body = &reply.body;
        let what = format!("{} {} of {id}", case.volume_type, case.size);
        assert_eq!(values(body, "volumeType"), [case.volume_type], "{what}: {body}");
        let field = |tag: &str| values(body, tag).into_iter().next();
        assert_eq!(field("size").as_deref(), Some(case.size), "{what}: {body}");
        assert_eq!(field("iops").as_deref(), case.reported.0, "{what}: {body}");
        assert_eq!(field("throughput").as_deref(), case.reported.1, "{what}: {body}");
        assert_eq!(field("device").as_deref(), Some("/dev/sda1"), "{what}: {body}");
        launched.push(id);
    }
    aws.terminate(&launched).await;
}
