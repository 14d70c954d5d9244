//! Machine images: the one resolver for the spec's `image` (by id, by name, by tag) and for the
//! image flotilla picks without one (Ubuntu 24.04, found by `network::ensure_region` and
//! journaled), each with the facts a launch template needs: its architecture and its root
//! device name (read from the image, never assumed).
//!
//! By name or tag only the images of `image_owners` (default: the account's own, `self`) are
//! candidates, as Aquarium Fish does: an image someone else published under a familiar name is
//! never picked. The newest available match of the binary's architecture wins (by
//! `CreationDate`). An image by id is explicit and is taken whoever owns it. When a lookup finds
//! nothing, [`explain`] says why (nothing in the region, only another architecture, only other
//! owners' images) for the reference check, which reports it at the spec field that wrote it.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::Image;
use flotilla_spec::account::ImageRef;

use crate::error::AwsError;
use crate::tags::filter;

/// What a launch needs to know about an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFacts {
    pub id: String,
    pub name: String,
    pub owner: String,
    /// `x86_64` or `arm64` (EC2's names).
    pub architecture: String,
    /// The device the image boots from, e.g. `/dev/sda1` or `/dev/xvda`.
    pub root_device_name: String,
    /// ISO 8601, as EC2 writes it (so it sorts by text).
    pub created: String,
}

impl ImageFacts {
    fn read(image: &Image) -> Option<ImageFacts> {
        Some(ImageFacts {
            id: image.image_id()?.to_owned(),
            name: image.name().unwrap_or_default().to_owned(),
            owner: image.owner_id().unwrap_or_default().to_owned(),
            architecture: image
                .architecture()
                .map(|a| a.as_str().to_owned())
                .unwrap_or_else(|| "x86_64".to_owned()),
            root_device_name: image.root_device_name().unwrap_or("/dev/sda1").to_owned(),
            created: image.creation_date().unwrap_or_default().to_owned(),
        })
    }
}

/// Why an image reference gives no image for a machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageProblem {
    /// Nothing matches in the region, whoever owns it.
    NotFound,
    /// Images match, but none of the architecture the machine needs.
    WrongArchitecture { found: Vec<ImageFacts> },
    /// Only images of owners not in `image_owners` match.
    OtherOwners { owners: Vec<String> },
}

impl ImageProblem {
    /// A sentence about `image` in `region` for a machine of `architecture`, and the fix.
    pub fn describe(
        &self,
        image: &ImageRef,
        region: &str,
        architecture: &str,
        owners: &[String],
    ) -> (String, String) {
        match self {
            ImageProblem::NotFound => (
                format!("image {image} not found in {region}"),
                match image {
                    ImageRef::Id(_) => format!(
                        "an image id belongs to one region: copy the image to {region} (CopyImage) and use its id there, or refer to it by name or tag"
                    ),
                    _ => format!("check the spelling, or register or copy the image in {region}"),
                },
            ),
            ImageProblem::WrongArchitecture { found } => {
                let list: Vec<String> =
                    found.iter().map(|i| format!("{} ({})", i.id, i.architecture)).collect();
                (
                    format!(
                        "image {image} in {region} is {}, but the machines of this entry need {architecture}: {}",
                        found.first().map(|i| i.architecture.as_str()).unwrap_or("?"),
                        list.join(", ")
                    ),
                    format!(
                        "use an {architecture} image, or a binary and instance types of the image's architecture"
                    ),
                )
            }
            ImageProblem::OtherOwners { owners: found } => {
                let allowed = effective_owners(owners).join(", ");
                (
                    format!(
                        "image {image} in {region} was found only in account {}, which is not in image_owners ({allowed})",
                        found.join(", ")
                    ),
                    format!(
                        "if you trust that account, add it to image_owners: [{}]",
                        found.join(", ")
                    ),
                )
            }
        }
    }
}

/// The owners a lookup by name or tag may pick from: `image_owners`, or the account's own.
pub fn effective_owners(owners: &[String]) -> Vec<String> {
    if owners.is_empty() { vec!["self".to_owned()] } else { owners.to_vec() }
}

/// Every image `image` names in `region` among the allowed `owners` (all owners for an id).
async fn candidates(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image: &ImageRef,
    owners: Option<&[String]>,
) -> Result<Vec<ImageFacts>, AwsError> {
    let mut call = ec2.describe_images();
    let what = image.to_string();
    match image {
        ImageRef::Id(id) => call = call.image_ids(id),
        ImageRef::Name(pattern) => {
            call = call.filters(filter("name", pattern)).filters(filter("state", "available"))
        }
        ImageRef::Tag { key, value } => {
            call = call
                .filters(filter(&format!("tag:{key}"), value))
                .filters(filter("state", "available"))
        }
    }
    if !matches!(image, ImageRef::Id(_))
        && let Some(owners) = owners
    {
        call = call.set_owners(Some(effective_owners(owners)));
    }
    match call.send().await {
        Ok(answer) => Ok(answer.images().iter().filter_map(ImageFacts::read).collect()),
        Err(e) => {
            let error = AwsError::from_sdk(region, "DescribeImages", what, e);
            let missing = error.code.as_deref().is_some_and(|c| c.starts_with("InvalidAMIID"));
            if missing { Ok(Vec::new()) } else { Err(error) }
        }
    }
}

/// The newest of `images` of `architecture`.
fn newest_of(images: &[ImageFacts], architecture: &str) -> Option<ImageFacts> {
    images
        .iter()
        .filter(|i| i.architecture == architecture)
        .max_by(|a, b| a.created.cmp(&b.created).then_with(|| a.id.cmp(&b.id)))
        .cloned()
}

/// The image `image` gives a machine of `architecture` in `region`, or why there is none.
pub async fn resolve(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image: &ImageRef,
    owners: &[String],
    architecture: &str,
) -> Result<Result<ImageFacts, ImageProblem>, AwsError> {
    let found = candidates(ec2, region, image, Some(owners)).await?;
    if let Some(image) = newest_of(&found, architecture) {
        return Ok(Ok(image));
    }
    if !found.is_empty() {
        return Ok(Err(ImageProblem::WrongArchitecture { found }));
    }
    Ok(Err(explain(ec2, region, image).await?))
}

/// Why a reference found nothing among the allowed owners: whether other owners have it.
async fn explain(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    image: &ImageRef,
) -> Result<ImageProblem, AwsError> {
    if matches!(image, ImageRef::Id(_)) {
        return Ok(ImageProblem::NotFound);
    }
    let anyone = candidates(ec2, region, image, None).await?;
    let owners: BTreeSet<String> = anyone.into_iter().map(|i| i.owner).collect();
    Ok(if owners.is_empty() {
        ImageProblem::NotFound
    } else {
        ImageProblem::OtherOwners { owners: owners.into_iter().collect() }
    })
}

/// The facts of images known by id (flotilla's own Ubuntu pick), as EC2 describes them.
pub async fn by_id(
    ec2: &aws_sdk_ec2::Client,
    region: &str,
    id: &str,
) -> Result<ImageFacts, AwsError> {
    let found = candidates(ec2, region, &ImageRef::Id(id.to_owned()), None).await?;
    found.into_iter().find(|i| i.id == id).ok_or_else(|| {
        AwsError::other(region, "DescribeImages", id, "the image is gone; run create again")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, architecture: &str, created: &str) -> ImageFacts {
        ImageFacts {
            id: id.into(),
            name: "golden".into(),
            owner: "123456789012".into(),
            architecture: architecture.into(),
            root_device_name: "/dev/xvda".into(),
            created: created.into(),
        }
    }

    #[test]
    fn the_newest_image_of_the_architecture_wins() {
        let images = [
            image("ami-old", "x86_64", "2025-01-01T00:00:00.000Z"),
            image("ami-new", "x86_64", "2025-06-01T00:00:00.000Z"),
            image("ami-arm", "arm64", "2026-01-01T00:00:00.000Z"),
        ];
        assert_eq!(newest_of(&images, "x86_64").unwrap().id, "ami-new");
        assert_eq!(newest_of(&images, "arm64").unwrap().id, "ami-arm");
        assert!(newest_of(&images[..2], "arm64").is_none());
    }

    #[test]
    fn problems_name_the_image_the_region_and_the_owners() {
        let name = ImageRef::Name("golden-*".into());
        let (message, help) = ImageProblem::OtherOwners { owners: vec!["099720109477".into()] }
            .describe(&name, "us-east-1", "x86_64", &[]);
        assert_eq!(
            message,
            "image name golden-* in us-east-1 was found only in account 099720109477, which is not in image_owners (self)"
        );
        assert!(help.contains("image_owners: [099720109477]"), "{help}");
        let (message, _) = ImageProblem::WrongArchitecture {
            found: vec![image("ami-arm", "arm64", "2026-01-01")],
        }
        .describe(&name, "eu-west-1", "x86_64", &[]);
        assert!(
            message.contains("is arm64, but the machines of this entry need x86_64"),
            "{message}"
        );
        let (message, help) = ImageProblem::NotFound.describe(
            &ImageRef::Id("ami-0123456789abcdef0".into()),
            "us-west-2",
            "x86_64",
            &[],
        );
        assert_eq!(message, "image ami-0123456789abcdef0 not found in us-west-2");
        assert!(help.contains("CopyImage"), "{help}");
    }
}
