//! One product taxonomy: whatever categories merchants and pages use are mapped onto it,
//! so that filters, comparisons and the mandate's blocked categories mean one thing.
//!
//! Nodes are `Category` slugs, a child naming its parent as its prefix
//! (`outdoor/camping` is within `outdoor`). A merchant's category path
//! (`Sporting Goods > Outdoor Recreation > Camping & Hiking > Tents`) is read from its
//! most specific segment to its least; the first segment with a known word names the
//! node. The product's title is the last resort. Nothing known: `uncategorized`, with
//! the merchant's own words kept beside it on the record.

use crate::ids::Category;

/// (node, words that name it). More specific nodes first: the first match wins.
const NODES: &[(&str, &[&str])] = &[
    ("alcohol/wine", &["wine", "wines", "champagne"]),
    ("alcohol/beer", &["beer", "beers", "ale", "lager"]),
    (
        "alcohol/spirits",
        &["whisky", "whiskey", "vodka", "gin", "rum", "spirits"],
    ),
    ("alcohol", &["alcohol", "alcoholic", "liquor"]),
    (
        "tobacco",
        &[
            "tobacco",
            "cigar",
            "cigars",
            "cigarette",
            "cigarettes",
            "vape",
        ],
    ),
    (
        "weapons",
        &[
            "weapon",
            "weapons",
            "firearm",
            "firearms",
            "ammunition",
            "gun",
            "guns",
        ],
    ),
    (
        "gift_cards",
        &["gift card", "gift cards", "giftcard", "voucher"],
    ),
    (
        "electronics/phones",
        &[
            "phone",
            "phones",
            "smartphone",
            "smartphones",
            "mobile phones",
            "cell phones",
        ],
    ),
    (
        "electronics/computers",
        &[
            "laptop",
            "laptops",
            "notebook computers",
            "computer",
            "computers",
            "desktop",
            "tablet",
            "tablets",
        ],
    ),
    (
        "electronics/audio",
        &[
            "headphone",
            "headphones",
            "earbuds",
            "earphones",
            "speaker",
            "speakers",
            "audio",
        ],
    ),
    ("electronics/cameras", &["camera", "cameras", "camcorder"]),
    (
        "electronics/tv",
        &["television", "televisions", "tv", "tvs"],
    ),
    ("electronics", &["electronics", "electronic"]),
    (
        "outdoor/camping",
        &[
            "tent",
            "tents",
            "camping",
            "sleeping bag",
            "sleeping bags",
            "backpacking",
            "hiking",
            "camp stove",
            "stove",
            "stoves",
            "lantern",
        ],
    ),
    (
        "outdoor/cycling",
        &["bicycle", "bicycles", "bike", "bikes", "cycling"],
    ),
    ("outdoor", &["outdoor", "outdoors", "outdoor recreation"]),
    (
        "apparel/shoes",
        &[
            "shoe", "shoes", "sneaker", "sneakers", "boots", "footwear", "sandals",
        ],
    ),
    (
        "apparel",
        &[
            "apparel", "clothing", "shirt", "shirts", "t-shirt", "jacket", "jackets", "dress",
            "dresses", "pants", "jeans",
        ],
    ),
    (
        "home/kitchen",
        &[
            "kitchen",
            "cookware",
            "pan",
            "pans",
            "pot",
            "pots",
            "knife",
            "knives",
            "blender",
            "coffee maker",
            "kettle",
        ],
    ),
    (
        "home/furniture",
        &[
            "furniture",
            "chair",
            "chairs",
            "sofa",
            "sofas",
            "desk",
            "desks",
            "table",
            "tables",
        ],
    ),
    ("home", &["home", "household", "garden", "home & garden"]),
    (
        "sports",
        &["sport", "sports", "fitness", "sporting goods", "exercise"],
    ),
    (
        "beauty",
        &["beauty", "cosmetics", "skincare", "makeup", "fragrance"],
    ),
    (
        "health",
        &[
            "health",
            "vitamin",
            "vitamins",
            "supplement",
            "supplements",
            "pharmacy",
        ],
    ),
    (
        "toys",
        &["toy", "toys", "lego", "board game", "board games", "puzzle"],
    ),
    (
        "books",
        &["book", "books", "novel", "paperback", "hardcover"],
    ),
    (
        "grocery",
        &[
            "grocery",
            "groceries",
            "food",
            "snack",
            "snacks",
            "beverages",
        ],
    ),
    (
        "pets",
        &["pet", "pets", "dog food", "cat food", "pet supplies"],
    ),
    (
        "office",
        &["office", "stationery", "office supplies", "printer"],
    ),
    (
        "automotive",
        &["automotive", "car parts", "tire", "tires", "motor oil"],
    ),
];

/// The node when nothing known matches.
pub const UNCATEGORIZED: &str = "uncategorized";

/// Every node of the taxonomy, for documentation and facets.
pub fn nodes() -> impl Iterator<Item = &'static str> {
    NODES
        .iter()
        .map(|(node, _)| *node)
        .chain(std::iter::once(UNCATEGORIZED))
}

/// The taxonomy node for a merchant's category path (segments separated by `>`, `/`,
/// `|` or `»`), falling back on the title.
pub fn map_category(merchant_category: Option<&str>, title: &str) -> Category {
    let segments: Vec<String> = merchant_category
        .unwrap_or_default()
        .split(['>', '/', '|', '»'])
        .map(normalize)
        .filter(|segment| !segment.is_empty())
        .collect();
    let node = segments
        .iter()
        .rev()
        .chain(std::iter::once(&normalize(title)))
        .find_map(|segment| node_for(segment))
        .unwrap_or(UNCATEGORIZED);
    Category::parse(node).unwrap_or_else(|_| uncategorized())
}

fn uncategorized() -> Category {
    // A constant slug: parses.
    Category::parse(UNCATEGORIZED).expect("a valid slug")
}

/// Lowercase words separated by single spaces; `&` kept as a word.
fn normalize(text: &str) -> String {
    text.to_lowercase()
        .split(|c: char| !(c.is_alphanumeric() || c == '&' || c == '-'))
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first node one of whose words (or phrases) appears in `segment` as whole words.
fn node_for(segment: &str) -> Option<&'static str> {
    let padded = format!(" {segment} ");
    NODES.iter().find_map(|(node, words)| {
        words
            .iter()
            .any(|word| padded.contains(&format!(" {word} ")))
            .then_some(*node)
    })
}

/// Whether `category` is `ancestor` or lies beneath it (`outdoor/camping` is within
/// `outdoor`, not within `out`).
pub fn is_within(category: &Category, ancestor: &Category) -> bool {
    let (category, ancestor) = (category.as_str(), ancestor.as_str());
    category == ancestor
        || category
            .strip_prefix(ancestor)
            .is_some_and(|rest| rest.starts_with('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapped(category: Option<&str>, title: &str) -> String {
        map_category(category, title).as_str().to_owned()
    }

    #[test]
    fn a_merchant_path_maps_from_its_most_specific_known_segment() {
        assert_eq!(
            mapped(
                Some("Sporting Goods > Outdoor Recreation > Camping & Hiking > Tents"),
                "Trail 2"
            ),
            "outdoor/camping"
        );
        assert_eq!(
            mapped(Some("Electronics > Audio > Headphones"), "X"),
            "electronics/audio"
        );
        assert_eq!(mapped(Some("Electronics > Gadgets"), "X"), "electronics");
        assert_eq!(mapped(Some("Wine"), "Rioja 2019"), "alcohol/wine");
    }

    #[test]
    fn without_a_known_category_the_title_decides_then_uncategorized() {
        assert_eq!(mapped(None, "Two-person dome tent"), "outdoor/camping");
        assert_eq!(
            mapped(Some("Misc"), "Noise-cancelling headphones"),
            "electronics/audio"
        );
        assert_eq!(mapped(Some("Misc"), "Widget"), "uncategorized");
        // Whole words only: "pantry" is not "pants".
        assert_eq!(mapped(None, "Pantry organiser"), "uncategorized");
    }

    #[test]
    fn a_category_is_within_itself_and_its_ancestors_only() {
        let c = |s: &str| Category::parse(s).expect("category");
        assert!(is_within(&c("outdoor/camping"), &c("outdoor")));
        assert!(is_within(&c("outdoor"), &c("outdoor")));
        assert!(!is_within(&c("outdoor"), &c("outdoor/camping")));
        assert!(!is_within(&c("outdoorsy"), &c("outdoor")));
    }

    #[test]
    fn every_node_is_a_valid_category() {
        for node in nodes() {
            assert!(Category::parse(node).is_ok(), "{node}");
        }
    }
}
