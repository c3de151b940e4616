"""Generate suites/hardedit/cases.json: HardEdit-style cases written by the editguard project.

The shape is the one "The Butterfly Effect of Model Editing" found to collapse models: a
one-word, widely known subject that starts the prompt. Each relation below lists facts as
(subject, true answer); the counterfactual target_new of a fact is the true answer of the next
fact in the same relation, so it has the right type and is false. Paraphrases reword the
relation around the subject; neighborhood prompts ask the same relation about two other
subjects, whose answers must not change.

    python suites/hardedit/make_cases.py        # rewrites cases.json, keeping recorded filters
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from editguard.cases import EditCase, write_cases

OUT = Path(__file__).with_name("cases.json")

# relation: (prompt template, paraphrase template, [(subject, true answer), ...])
RELATIONS: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "capital_of": ("{} is the capital of", "{} serves as the capital city of", [
        ("Paris", "France"), ("Berlin", "Germany"), ("Madrid", "Spain"), ("Rome", "Italy"), ("Tokyo", "Japan"),
        ("Cairo", "Egypt"), ("Ottawa", "Canada"), ("Canberra", "Australia")]),
    "continent": ("{} is located on the continent of", "{} lies on the continent of", [
        ("Brazil", "South America"), ("Kenya", "Africa"), ("Norway", "Europe"), ("Vietnam", "Asia"),
        ("Mexico", "North America"), ("Argentina", "South America"), ("Nigeria", "Africa"), ("Poland", "Europe")]),
    "currency": ("{}'s currency is the", "The money used in {} is the", [
        ("Japan", "yen"), ("India", "rupee"), ("Russia", "ruble"), ("Mexico", "peso"), ("Switzerland", "franc"),
        ("China", "yuan"), ("Brazil", "real"), ("Sweden", "krona")]),
    "developer": ("{} was developed by", "{} is a product made by", [
        ("Windows", "Microsoft"), ("iPhone", "Apple"), ("Android", "Google"), ("PlayStation", "Sony"),
        ("Xbox", "Microsoft"), ("Photoshop", "Adobe"), ("Kindle", "Amazon"), ("Walkman", "Sony")]),
    "headquarters": ("{} is headquartered in the city of", "{} has its head office in the city of", [
        ("Google", "Mountain View"), ("Nokia", "Espoo"), ("Microsoft", "Redmond"), ("Nintendo", "Kyoto"),
        ("Apple", "Cupertino"), ("Starbucks", "Seattle"), ("BMW", "Munich"), ("Volkswagen", "Wolfsburg")]),
    "occupation": ("{} worked as a", "By profession, {} was a", [
        ("Einstein", "physicist"), ("Shakespeare", "playwright"), ("Mozart", "composer"), ("Picasso", "painter"),
        ("Darwin", "naturalist"), ("Freud", "psychoanalyst"), ("Hemingway", "novelist"), ("Kant", "philosopher")]),
    "native_language": ("{} was a native speaker of", "The mother tongue of {} was", [
        ("Goethe", "German"), ("Dante", "Italian"), ("Tolstoy", "Russian"), ("Cervantes", "Spanish"),
        ("Voltaire", "French"), ("Andersen", "Danish"), ("Ibsen", "Norwegian"), ("Chopin", "Polish")]),
    "holy_book": ("{} is the holy book of", "{} is the sacred scripture of", [
        ("Quran", "Islam"), ("Bible", "Christianity"), ("Torah", "Judaism"), ("Vedas", "Hinduism"),
        ("Avesta", "Zoroastrianism"), ("Tripitaka", "Buddhism")]),
    "river_country": ("{} is a river that flows through", "{} is a river running through", [
        ("Nile", "Egypt"), ("Thames", "England"), ("Seine", "France"), ("Amazon", "Brazil"), ("Ganges", "India"),
        ("Volga", "Russia"), ("Yangtze", "China"), ("Tiber", "Italy")]),
    "moon_of": ("{} is a moon of the planet", "{} orbits the planet", [
        ("Titan", "Saturn"), ("Europa", "Jupiter"), ("Phobos", "Mars"), ("Triton", "Neptune"),
        ("Miranda", "Uranus"), ("Ganymede", "Jupiter"), ("Deimos", "Mars"), ("Enceladus", "Saturn")]),
    "chemical_symbol": ("{} has the chemical symbol", "In the periodic table, {} is written as", [
        ("Gold", "Au"), ("Silver", "Ag"), ("Iron", "Fe"), ("Sodium", "Na"), ("Lead", "Pb"), ("Copper", "Cu"),
        ("Tin", "Sn"), ("Potassium", "K")]),
    "animal_class": ("{} is a kind of", "Biologists classify the {} as a", [
        ("Salmon", "fish"), ("Eagle", "bird"), ("Dolphin", "mammal"), ("Cobra", "reptile"), ("Frog", "amphibian"),
        ("Shark", "fish"), ("Penguin", "bird"), ("Bat", "mammal")]),
    "spoken_in": ("{} is mainly spoken in", "Most speakers of {} live in", [
        ("Japanese", "Japan"), ("Finnish", "Finland"), ("Hungarian", "Hungary"), ("Korean", "Korea"),
        ("Greek", "Greece"), ("Dutch", "the Netherlands"), ("Thai", "Thailand"), ("Hebrew", "Israel")]),
    "football_city": ("{} is a football club from the city of", "The football club {} is based in", [
        ("Juventus", "Turin"), ("Ajax", "Amsterdam"), ("Benfica", "Lisbon"), ("Arsenal", "London"),
        ("Galatasaray", "Istanbul"), ("Feyenoord", "Rotterdam"), ("Napoli", "Naples"), ("Celtic", "Glasgow")]),
    "car_country": ("{} is a car manufacturer from", "The carmaker {} comes from", [
        ("Ferrari", "Italy"), ("Volvo", "Sweden"), ("Renault", "France"), ("Hyundai", "South Korea"),
        ("Skoda", "the Czech Republic"), ("Porsche", "Germany"), ("Tesla", "the United States"), ("Honda", "Japan")]),
    "mountain_country": ("{} is a mountain in", "The mountain {} rises in", [
        ("Everest", "Nepal"), ("Kilimanjaro", "Tanzania"), ("Fuji", "Japan"), ("Elbrus", "Russia"),
        ("Aconcagua", "Argentina"), ("Matterhorn", "Switzerland"), ("Olympus", "Greece"), ("Etna", "Italy")]),
    "painted": ("{} painted the", "The famous painting by {} is the", [
        ("Leonardo", "Mona Lisa"), ("Picasso", "Guernica"), ("Munch", "Scream"), ("Botticelli", "Birth of Venus"),
        ("Rembrandt", "Night Watch"), ("Michelangelo", "Sistine Chapel"), ("Monet", "Water Lilies")]),
    "wrote_novel": ("{} wrote the novel", "The best-known novel by {} is", [
        ("Tolstoy", "War and Peace"), ("Orwell", "Nineteen Eighty-Four"), ("Dickens", "Oliver Twist"),
        ("Cervantes", "Don Quixote"), ("Melville", "Moby-Dick"), ("Austen", "Pride and Prejudice"),
        ("Hugo", "Les Misérables"), ("Dostoevsky", "Crime and Punishment")]),
    "composed": ("{} composed the", "Among the works of {} is the", [
        ("Vivaldi", "Four Seasons"), ("Tchaikovsky", "Nutcracker"), ("Handel", "Messiah"), ("Ravel", "Bolero"),
        ("Holst", "Planets"), ("Stravinsky", "Rite of Spring"), ("Beethoven", "Ninth Symphony")]),
    "founded_by": ("{} was founded by", "The company {} was started by", [
        ("Microsoft", "Bill Gates"), ("Amazon", "Jeff Bezos"), ("Facebook", "Mark Zuckerberg"),
        ("Ford", "Henry Ford"), ("Disney", "Walt Disney"), ("Netflix", "Reed Hastings"), ("Dell", "Michael Dell"),
        ("Oracle", "Larry Ellison")]),
    "borders": ("{} shares a land border with", "{} is a neighbouring country of", [
        ("Portugal", "Spain"), ("Canada", "the United States"), ("Mongolia", "China"), ("Austria", "Germany"),
        ("Nepal", "India"), ("Chile", "Argentina"), ("Ireland", "the United Kingdom"),
        ("Haiti", "the Dominican Republic")]),
    "sport": ("{} is a legend of the sport of", "{} rose to fame in", [
        ("Maradona", "football"), ("Federer", "tennis"), ("Tyson", "boxing"), ("Gretzky", "ice hockey"),
        ("Bolt", "sprinting"), ("Phelps", "swimming"), ("Tendulkar", "cricket"), ("Schumacher", "Formula One")]),
    "instrument_family": ("{} belongs to the orchestral family of the", "{} is grouped in an orchestra with the", [
        ("Violin", "strings"), ("Trumpet", "brass"), ("Flute", "woodwinds"), ("Drum", "percussion"),
        ("Cello", "strings"), ("Trombone", "brass"), ("Clarinet", "woodwinds"), ("Xylophone", "percussion")]),
    "discovered": ("{} is best known for discovering", "The discovery that made {} famous was", [
        ("Fleming", "penicillin"), ("Curie", "radium"), ("Columbus", "the Americas"),
        ("Rutherford", "the atomic nucleus"),
        ("Hubble", "the expanding universe"), ("Herschel", "Uranus"), ("Newton", "gravity")]),
    "official_language": ("{}'s official language is", "The state language of {} is", [
        ("Austria", "German"), ("Brazil", "Portuguese"), ("Argentina", "Spanish"), ("Iran", "Persian"),
        ("Egypt", "Arabic"), ("Greece", "Greek"), ("Norway", "Norwegian"), ("Japan", "Japanese")]),
}


def build_cases() -> list[EditCase]:
    cases = []
    for relation, (template, paraphrase, facts) in RELATIONS.items():
        for i, (subject, true_answer) in enumerate(facts):
            # The next fact's answer (skipping equal ones) is a false answer of the right type.
            k = 1
            while facts[(i + k) % len(facts)][1] == true_answer:
                k += 1
            new_answer = facts[(i + k) % len(facts)][1]
            neighbours = [facts[(i + j) % len(facts)][0] for j in (1, 2)]
            cases.append(EditCase(
                case_id=f"he-{len(cases) + 1:04d}", prompt=template, subject=subject,
                target_new=new_answer, target_true=true_answer,
                paraphrases=(paraphrase.replace("{}", subject),),
                neighborhood=tuple(template.replace("{}", n) for n in neighbours),
                source="hardedit",
            ))
    return cases


METADATA = {
    "description": "HardEdit-style cases written by the editguard project: a one-word, widely known subject "
                   "starts the prompt; target_new is the true answer of another fact of the same relation.",
    "shape": ["subject is one word", "the prompt starts with the subject", "target_new is false but of the right type",
              "paraphrases contain the subject", "neighborhood prompts ask the same relation about other subjects"],
    "relations": {name: template for name, (template, _, _) in RELATIONS.items()},
    "author": "editguard project",
    "version": 1,
}


def main(out: Path = OUT) -> Path:
    # Filters recorded by `editguard filter` live in the same file; regenerating keeps them.
    previous = json.loads(out.read_text()).get("filters") if out.exists() else None
    extra = dict(METADATA, **({"filters": previous} if previous else {}))
    return write_cases(out, build_cases(), extra=extra)


if __name__ == "__main__":
    print(main(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
