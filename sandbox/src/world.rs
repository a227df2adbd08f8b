//! The generated world: entities with attributes and relations, fixed by a
//! seed. Everything else in the sandbox (pages, questions, search) is
//! rendered from a [`World`], so the same seed gives the same web.

use fathom_core::SeededRng;

/// What an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A country, with a capital city.
    Country,
    /// A city in a country.
    City,
    /// A person born in a city.
    Person,
    /// A company founded by a person, headquartered in a city.
    Company,
    /// A creative work by a person, published by a company.
    Work,
}

/// An index into [`World::entities`].
pub type EntityId = usize;

/// Attributes and relations, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Facts {
    /// A country.
    Country {
        /// Its capital (a city).
        capital: EntityId,
        /// Its continent.
        continent: &'static str,
        /// Its currency's name.
        currency: String,
    },
    /// A city.
    City {
        /// The country it is in.
        country: EntityId,
        /// Its population.
        population: u64,
        /// The year it was founded.
        founded: u32,
    },
    /// A person.
    Person {
        /// Birth year.
        born: u32,
        /// Birthplace (a city).
        birthplace: EntityId,
        /// Occupation.
        occupation: &'static str,
    },
    /// A company.
    Company {
        /// Founder (a person).
        founder: EntityId,
        /// Founding year.
        founded: u32,
        /// Headquarters (a city).
        headquarters: EntityId,
        /// Industry.
        industry: &'static str,
    },
    /// A creative work.
    Work {
        /// `novel`, `film` or `album`.
        form: &'static str,
        /// Release year.
        year: u32,
        /// Creator (a person).
        creator: EntityId,
        /// Publisher, studio or label (a company).
        publisher: EntityId,
    },
}

/// One thing in the world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entity {
    /// Its index.
    pub id: EntityId,
    /// What it is.
    pub kind: Kind,
    /// Its canonical name.
    pub name: String,
    /// Other accepted names (used as alternative ground truths).
    pub aliases: Vec<String>,
    /// URL path segment of its pages.
    pub slug: String,
    /// Its attributes.
    pub facts: Facts,
}

/// The generated world.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    /// The seed it was generated from.
    pub seed: u64,
    /// Every entity; ids are indexes.
    pub entities: Vec<Entity>,
}

const CONTINENTS: &[&str] = &["Veloria", "Austrin", "Meridia", "Nortesca"];
const OCCUPATIONS: &[&str] = &[
    "engineer",
    "novelist",
    "film director",
    "composer",
    "physicist",
    "architect",
    "economist",
    "painter",
    "journalist",
    "chemist",
];
const INDUSTRIES: &[&str] = &[
    "mobile phones",
    "shipbuilding",
    "publishing",
    "film production",
    "recorded music",
    "software",
    "textiles",
    "aviation",
    "pharmaceuticals",
    "railways",
];
const FIRST_NAMES: &[&str] = &[
    "Ada", "Bram", "Cora", "Dario", "Elin", "Falk", "Greta", "Hugo", "Ines", "Joris", "Kaja", "Lior", "Maren", "Nils",
    "Oona", "Pavel", "Quinn", "Rosa", "Sten", "Tova", "Ulla", "Viggo", "Wren", "Ximena", "Yara", "Zeno", "Alma", "Bo",
    "Cyra", "Dag", "Esme", "Finn", "Gale", "Hedda", "Ivo", "Juno",
];
const ONSETS: &[&str] = &[
    "b", "br", "c", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v", "w",
    "z",
];
const VOWELS: &[&str] = &["a", "e", "i", "o", "u", "ai", "ea", "ou"];
const CODAS: &[&str] = &["", "", "n", "r", "l", "s", "nd", "rk", "st", "m", "th"];
const CITY_SUFFIXES: &[&str] = &[
    "ford", "holm", "via", "port", "burg", "dale", "mouth", "stad", "ton", "wick",
];
const COUNTRY_SUFFIXES: &[&str] = &["ia", "land", "ania", "ora", "istan", "ovia"];
const COMPANY_SUFFIXES: &[&str] = &[
    "Mobile",
    "Works",
    "Labs",
    "Group",
    "Press",
    "Studios",
    "Records",
    "Industries",
];
const ADJECTIVES: &[&str] = &[
    "Silent",
    "Crimson",
    "Distant",
    "Hollow",
    "Golden",
    "Broken",
    "Northern",
    "Quiet",
    "Endless",
    "Hidden",
    "Last",
    "Burning",
    "Painted",
    "Frozen",
    "Wandering",
];
const NOUNS: &[&str] = &[
    "Harbour", "Orchard", "Lantern", "River", "Mirror", "Garden", "Signal", "Winter", "Archive", "Compass", "Meadow",
    "Tide", "Bridge", "Voyage", "Citadel",
];
const WORK_FORMS: &[&str] = &["novel", "film", "album"];

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn syllables(rng: &mut SeededRng, n: usize) -> String {
    let mut s = String::new();
    for _ in 0..n {
        s.push_str(rng.pick(ONSETS));
        s.push_str(rng.pick(VOWELS));
    }
    s.push_str(rng.pick(CODAS));
    s
}

/// The URL slug of a name: ASCII alphanumerics and underscores.
pub fn slugify(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

struct Namer {
    used: std::collections::HashSet<String>,
}

impl Namer {
    /// A name from `make` that is not taken yet. When `make`'s space runs
    /// out (large worlds), a made-up word is appended until the name is new.
    fn unique(&mut self, rng: &mut SeededRng, mut make: impl FnMut(&mut SeededRng) -> String) -> String {
        for _ in 0..64 {
            let name = make(rng);
            if self.used.insert(name.to_lowercase()) {
                return name;
            }
        }
        loop {
            let name = format!("{} {}", make(rng), capitalise(&syllables(rng, 2)));
            if self.used.insert(name.to_lowercase()) {
                return name;
            }
        }
    }
}

impl World {
    /// Generates a world of about `size` entities (at least 40) from `seed`.
    pub fn generate(seed: u64, size: usize) -> World {
        let size = size.max(40);
        let mut rng = SeededRng::new(fathom_core::derive_seed(seed, "sandbox-world", 0));
        let mut namer = Namer {
            used: Default::default(),
        };
        let n_countries = (size / 20).max(3);
        let n_cities = (size / 5).max(n_countries * 2);
        let n_people = size * 2 / 5;
        let n_companies = size / 5;
        let n_works = size
            .saturating_sub(n_countries + n_cities + n_people + n_companies)
            .max(size / 10);
        let mut entities: Vec<Entity> = Vec::new();
        let push = |entities: &mut Vec<Entity>, kind, name: String, aliases, facts| {
            let id = entities.len();
            entities.push(Entity {
                id,
                kind,
                slug: slugify(&name),
                name,
                aliases,
                facts,
            });
            id
        };

        let countries: Vec<EntityId> = (0..n_countries)
            .map(|_| {
                let name = namer.unique(&mut rng, |r| {
                    let n = 1 + r.below(2) as usize;
                    capitalise(&(syllables(r, n) + r.pick(COUNTRY_SUFFIXES)))
                });
                let currency = format!("{} {}", name.trim_end_matches(|c| "aeiou".contains(c)), "crown");
                let continent = rng.pick(CONTINENTS);
                push(
                    &mut entities,
                    Kind::Country,
                    name,
                    vec![],
                    Facts::Country {
                        capital: 0,
                        continent,
                        currency,
                    },
                )
            })
            .collect();

        let cities: Vec<EntityId> = (0..n_cities)
            .map(|i| {
                let name = namer.unique(&mut rng, |r| {
                    let n = 1 + r.below(2) as usize;
                    capitalise(&(syllables(r, n) + r.pick(CITY_SUFFIXES)))
                });
                // Every country gets at least two cities.
                let country = if i < n_countries * 2 {
                    countries[i % n_countries]
                } else {
                    rng.pick(&countries)
                };
                let facts = Facts::City {
                    country,
                    population: 5_000 + rng.below(3_000_000),
                    founded: 900 + rng.below(1000) as u32,
                };
                push(&mut entities, Kind::City, name, vec![], facts)
            })
            .collect();
        for &c in &countries {
            let in_country: Vec<EntityId> = cities
                .iter()
                .copied()
                .filter(|&city| matches!(entities[city].facts, Facts::City { country, .. } if country == c))
                .collect();
            let capital = rng.pick(&in_country);
            if let Facts::Country { capital: cap, .. } = &mut entities[c].facts {
                *cap = capital;
            }
        }

        let people: Vec<EntityId> = (0..n_people)
            .map(|i| {
                // Every tenth person shares a first name and a near-identical
                // surname with the previous one: a similar-named distractor.
                let name = if i % 10 == 9 {
                    let prev = &entities[entities.len() - 1].name;
                    let twin = format!("{prev}t");
                    if namer.used.insert(twin.to_lowercase()) {
                        twin
                    } else {
                        namer.unique(&mut rng, |r| {
                            format!("{} {}", r.pick(FIRST_NAMES), capitalise(&syllables(r, 1)))
                        })
                    }
                } else {
                    namer.unique(&mut rng, |r| {
                        let n = 1 + r.below(2) as usize;
                        format!("{} {}", r.pick(FIRST_NAMES), capitalise(&syllables(r, n)))
                    })
                };
                let (first, last) = name.split_once(' ').expect("two-part name");
                let aliases = vec![format!("{}. {last}", &first[..1])];
                let facts = Facts::Person {
                    born: 1900 + rng.below(100) as u32,
                    birthplace: rng.pick(&cities),
                    occupation: rng.pick(OCCUPATIONS),
                };
                push(&mut entities, Kind::Person, name, aliases, facts)
            })
            .collect();

        let companies: Vec<EntityId> = (0..n_companies)
            .map(|_| {
                let founder = rng.pick(&people);
                let surname = entities[founder].name.split(' ').nth(1).unwrap_or("Nova").to_string();
                let name = namer.unique(&mut rng, |r| {
                    let base = if r.below(2) == 0 {
                        surname.clone()
                    } else {
                        capitalise(&syllables(r, 2))
                    };
                    format!("{base} {}", r.pick(COMPANY_SUFFIXES))
                });
                let born = match entities[founder].facts {
                    Facts::Person { born, .. } => born,
                    _ => 1950,
                };
                let facts = Facts::Company {
                    founder,
                    founded: born + 25 + rng.below(30) as u32,
                    headquarters: rng.pick(&cities),
                    industry: rng.pick(INDUSTRIES),
                };
                push(&mut entities, Kind::Company, name, vec![], facts)
            })
            .collect();

        for _ in 0..n_works {
            let name = namer.unique(&mut rng, |r| format!("The {} {}", r.pick(ADJECTIVES), r.pick(NOUNS)));
            let alias = name.trim_start_matches("The ").to_string();
            let creator = rng.pick(&people);
            let born = match entities[creator].facts {
                Facts::Person { born, .. } => born,
                _ => 1950,
            };
            let facts = Facts::Work {
                form: rng.pick(WORK_FORMS),
                year: born + 20 + rng.below(40) as u32,
                creator,
                publisher: rng.pick(&companies),
            };
            push(&mut entities, Kind::Work, name, vec![alias], facts);
        }
        World { seed, entities }
    }

    /// An entity by id.
    pub fn get(&self, id: EntityId) -> &Entity {
        &self.entities[id]
    }

    /// Entities of one kind.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Entity> {
        self.entities.iter().filter(move |e| e.kind == kind)
    }

    /// The entity with this name, if any (case-insensitive).
    pub fn by_name(&self, name: &str) -> Option<&Entity> {
        self.entities.iter().find(|e| e.name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_world() {
        let a = World::generate(7, 200);
        let b = World::generate(7, 200);
        assert_eq!(a, b);
        assert_ne!(a, World::generate(8, 200));
        assert!(a.entities.len() >= 190, "{}", a.entities.len());
    }

    #[test]
    fn large_worlds_do_not_run_out_of_names() {
        let w = World::generate(1, 5000);
        assert!(w.entities.len() >= 5000);
        let names: std::collections::HashSet<String> = w.entities.iter().map(|e| e.name.to_lowercase()).collect();
        assert_eq!(names.len(), w.entities.len());
    }

    #[test]
    fn relations_point_at_the_right_kinds_and_names_are_unique() {
        let w = World::generate(3, 300);
        let mut names = std::collections::HashSet::new();
        for e in &w.entities {
            assert!(names.insert(e.name.to_lowercase()), "duplicate name {}", e.name);
            let kind_of = |id: EntityId| w.get(id).kind;
            match e.facts {
                Facts::Country { capital, .. } => {
                    assert_eq!(kind_of(capital), Kind::City);
                    assert!(matches!(w.get(capital).facts, Facts::City { country, .. } if country == e.id));
                }
                Facts::City { country, .. } => assert_eq!(kind_of(country), Kind::Country),
                Facts::Person { birthplace, .. } => assert_eq!(kind_of(birthplace), Kind::City),
                Facts::Company {
                    founder, headquarters, ..
                } => {
                    assert_eq!(kind_of(founder), Kind::Person);
                    assert_eq!(kind_of(headquarters), Kind::City);
                }
                Facts::Work { creator, publisher, .. } => {
                    assert_eq!(kind_of(creator), Kind::Person);
                    assert_eq!(kind_of(publisher), Kind::Company);
                }
            }
        }
        // Similar-named distractors exist.
        assert!(
            w.of_kind(Kind::Person)
                .any(|p| p.name.ends_with('t') && w.by_name(&p.name[..p.name.len() - 1]).is_some())
        );
    }
}
