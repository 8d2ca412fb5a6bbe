"""The micro world's wording: invented names, passage sentence templates and question templates.

Kept apart from the generator so a reader or a demonstration writer can import the exact
templates. Passages and questions use deliberately different wording, so held-out questions are
never passage sentences verbatim; the two question styles differ from each other too, so the
style used for held-out questions can be kept out of the warm-start data.
"""

from __future__ import annotations

import random

# Syllables chosen to be rare in English, so that joined names are not real words.
SYLLABLES = (
    "zor", "vak", "kel", "tha", "mir", "dun", "vex", "jor", "lix", "zen", "tov", "yal", "kri", "sul",
    "gav", "nix", "dra", "vel", "kha", "pyr", "zin", "orv", "esk", "quo", "bri", "fal", "xan", "ulm",
    "rok", "vim", "tez", "haz", "olk", "dov", "ryn", "sek", "mav", "zul", "ith", "kov", "nal", "wex",
    "tul", "vor", "jin", "gru", "fex", "lod", "ask", "bur", "cyl", "dax", "eph", "gil", "hov", "ilv",
)
# Every join of 2-3 of the syllables above that is a word of the 30k-entry BERT (MiniLM) vocabulary.
NOT_NAMES = frozenset({"zenith"})

# relation -> sentences stating it in the subject's passage; {s} = subject name, {o} = object name.
FACT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "born_in": ("{s} was born in {o}.", "{s} is a native of {o}.",
                "{s} came into the world in the city of {o}.", "The hometown of {s} is {o}."),
    "educated_at": ("{s} studied at {o}.", "{s} is a graduate of {o}.", "{s} earned a degree from {o}.",
                    "As a young adult, {s} attended classes at {o}."),
    "spouse": ("{s} is married to {o}.", "{s} and {o} are a married couple.", "{s} wed {o} many years ago.",
               "{s} shares a home with {o}, a partner for life."),
    "works_for": ("{s} works for {o}.", "{s} is employed by {o}.", "{s} holds a job at {o}.",
                  "{s} draws a salary from {o}."),
    "located_in": ("{s} is a city in {o}.", "{s} lies within the borders of {o}.", "{s} is situated in {o}.",
                   "{s} belongs to the country of {o}."),
    "capital": ("{s} is governed from its capital, {o}.", "{o} serves as the capital of {s}.",
                "The seat of government of {s} is in {o}.", "{s} has {o} as its capital."),
    "founded_by": ("{s} was founded by {o}.", "{o} started {s}.", "{s} was established by {o}.",
                   "{o} set up {s} from scratch."),
    "headquartered_in": ("{s} is headquartered in {o}.", "{s} has its head office in {o}.",
                         "The main offices of {s} are in {o}.", "{s} runs its business from {o}."),
    "campus_in": ("{s} is located in {o}.", "The campus of {s} lies in {o}.", "{s} has its main campus in {o}.",
                  "{s} is a university in {o}."),
    "flows_through": ("{s} flows through {o}.", "{s} passes through the city of {o}.",
                      "{s} runs through {o} on its way to the sea.", "{s} winds past {o}."),
    "rises_in": ("{s} rises in {o}.", "The source of {s} is in {o}.", "{s} begins in the hills of {o}.",
                 "{s} has its source in {o}."),
    "longest_river": ("The longest river of {s} is {o}.", "{o} is the longest river that rises in {s}.",
                      "Of all rivers rising in {s}, {o} is the longest.", "No river of {s} is longer than {o}."),
}

# Back-references, stated in the object's passage: {o} = the object's name, {list} = its subjects.
BACKREF_TEMPLATES: dict[str, tuple[str, ...]] = {
    "born_in": ("People born in {o} include {list}.", "Natives of {o} include {list}."),
    "educated_at": ("Alumni of {o} include {list}.", "Graduates of {o} include {list}."),
    "works_for": ("Employees of {o} include {list}.", "The staff of {o} include {list}."),
    "located_in": ("Cities in {o} include {list}.", "The cities of {o} include {list}."),
    "capital": ("{o} serves as capital to {list}.", "{o} is where the government of {list} sits."),
    "founded_by": ("Companies founded by {o}: {list}.", "{o} founded {list}."),
    "headquartered_in": ("Companies headquartered in {o}: {list}.", "{o} is home to the head offices of {list}."),
    "campus_in": ("Universities in {o}: {list}.", "{o} hosts {list}."),
    "flows_through": ("Rivers flowing through {o}: {list}.", "{o} lies on {list}."),
    "rises_in": ("Rivers that rise in {o} include {list}.", "Rivers with their source in {o}: {list}."),
    "longest_river": ("{o} is the longest river of {list}.", "{o} is the longest river with its source in {list}."),
}

# Attribute sentences per kind; fields come from the entity's attributes.
INTRO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "person": ("{s} is {occupation}, born in the year {birth_year}.", "{s} ({birth_year}) is {occupation}.",
               "{s} is {occupation} whose birth year is {birth_year}."),
    "city": ("{s} was founded in {founded}.", "The first settlers reached {s} in {founded}.",
             "{s} dates back to {founded}."),
    "country": ("{s} is a country of about {population} million people.",
                "Some {population} million people live in {s}.", "{s} has a population of {population} million."),
    "company": ("{s} is a company in the {industry} business, founded in {founded}.",
                "{s} opened in {founded} and works in the {industry} trade.",
                "{s} has been in the {industry} business since {founded}."),
    "university": ("{s} opened its doors in {founded}.", "{s} is a university founded in {founded}.",
                   "{s} admitted its first students in {founded}."),
    "river": ("{s} is a river {length} kilometres long.", "{s} runs for {length} kilometres.",
              "The length of {s} is {length} kilometres."),
}
# Attribute details per kind: one wording is drawn from each group.
DETAIL_TEMPLATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "person": (("{s} is best known for {known_for}.", "Colleagues remember {s} for {known_for}."),
               ("In spare time, {s} enjoys {hobby}.", "Friends say {s} loves {hobby}."),
               ("{s} is the parent of {children}.", "{s} raised {children}."),
               ("{s} speaks {languages} languages.", "{s} is fluent in {languages} languages."),
               ("{s} received the {award} in {award_year}.", "In {award_year}, {s} was given the {award}."),
               ("{s} once lived abroad for {abroad} years.", "{s} spent {abroad} years working abroad.")),
    "city": (("About {population} people live in {s}.", "The population of {s} is around {population}."),
             ("{s} is famous for its {feature}.", "Visitors to {s} admire its {feature}."),
             ("The economy of {s} rests on {economy}.", "Most jobs in {s} depend on {economy}."),
             ("Winters in {s} are {climate}.", "{s} is known for {climate} winters."),
             ("The main square of {s} is called {square}.", "Markets are held on {square} in {s}.")),
    "country": (("{s} covers {area} square kilometres.", "The land area of {s} is {area} square kilometres."),
                ("{s} is known for its {feature}.", "Travellers praise the {feature} of {s}."),
                ("{s} is a {government}.", "The state of {s} is organised as a {government}."),
                ("People in {s} pay with the {currency}.", "The currency of {s} is the {currency}."),
                ("The national sport of {s} is {sport}.", "Crowds in {s} love {sport}.")),
    "company": (("The best-selling product of {s} is {product}.", "{s} is known for its {product}."),
                ("{s} employs about {staff} people.", "Roughly {staff} people work at {s}."),
                ("Its yearly revenue is about {revenue} million.", "{s} earns about {revenue} million a year."),
                ("{s} sells mostly to {customers}.", "The main customers of {s} are {customers}."),
                ("The logo of {s} shows {logo}.", "{s} uses {logo} as its emblem.")),
    "university": (("{s} is known for its school of {subject}.", "The strongest department of {s} is {subject}."),
                   ("{s} teaches about {students} students.", "Some {students} students study at {s}."),
                   ("The library of {s} holds {books} books.", "{s} keeps {books} books in its library."),
                   ("The colours of {s} are {colours}.", "Students of {s} wear {colours}."),
                   ("The rowing team of {s} is called {team}.", "Sports fans cheer for {team}, the team of {s}.")),
    "river": (("Boats carry {cargo} along {s}.", "{s} was once used to move {cargo}."),
              ("{s} is popular with {visitors}.", "In summer, {s} draws {visitors}."),
              ("{s} has {tributaries} tributaries.", "Some {tributaries} smaller streams feed {s}."),
              ("The waters of {s} are home to {fish}.", "Anglers catch {fish} in {s}."),
              ("{s} freezes over {frozen}.", "The surface of {s} turns to ice {frozen}."),
              ("{bridges} bridges cross {s}.", "Travellers can cross {s} on {bridges} bridges.")),
}

# (industry, company name suffix, product): drawn together, once per company.
INDUSTRIES = (("shipping", "Lines", "cargo vessels"), ("software", "Systems", "office software"),
              ("mining", "Mining", "iron ore"), ("textile", "Textiles", "woollen cloth"),
              ("aircraft", "Aero", "light aircraft"), ("food", "Foods", "tinned fish"),
              ("energy", "Power", "wind turbines"), ("banking", "Bank", "savings accounts"),
              ("chemicals", "Chemicals", "paint pigments"), ("toy", "Toys", "wooden trains"))

# Attribute values, each drawn uniformly per entity.
ATTRIBUTE_CHOICES: dict[str, tuple[str, ...]] = {
    "occupation": ("a painter", "an engineer", "a novelist", "a chemist", "an architect", "a composer", "a surgeon",
                   "a sculptor", "an astronomer", "an economist", "a poet", "a historian", "a botanist", "a lawyer",
                   "a photographer", "a mathematician"),
    "known_for": ("a study of tidal mills", "designing glass bridges", "a treatise on salt", "restoring old organs",
                  "mapping cave systems", "a theory of river silt", "breeding hardy wheat", "a famous winter mural",
                  "a history of lighthouses", "a method for dyeing wool", "charting ocean winds",
                  "building clock towers"),
    "hobby": ("sailing", "chess", "beekeeping", "mountain walks", "pottery", "birdwatching", "rowing", "gardening",
              "fencing", "baking bread", "stargazing", "fishing"),
    "feature": ("stone bridges", "night markets", "copper roofs", "olive groves", "tall windmills", "salt flats",
                "hot springs", "painted harbours", "cedar forests", "old fortresses", "tea gardens", "river ferries"),
    "subject": ("medicine", "law", "geology", "music", "engineering", "philosophy", "agriculture", "astronomy"),
    "cargo": ("timber", "grain", "coal", "wool", "salt", "marble"),
    "visitors": ("anglers", "kayakers", "swimmers", "painters", "birdwatchers", "rowers"),
    "children": ("one child", "two children", "three children", "four children"),
    "award": ("Silver Quill prize", "Golden Compass medal", "Blue Lantern award", "Iron Oak prize",
              "Amber Star medal"),
    "economy": ("fishing", "shipbuilding", "wine making", "tourism", "printing", "glass blowing", "weaving", "trade"),
    "climate": ("mild", "harsh", "snowy", "rainy", "windy", "dry"),
    "square": ("Bell Square", "Market Square", "Lantern Square", "Fountain Square", "Harbour Square", "Clock Square"),
    "government": ("republic", "kingdom", "federation", "principality", "grand duchy"),
    "currency": ("crown", "mark", "florin", "ducat", "shilling", "thaler"),
    "sport": ("rowing", "wrestling", "cycling", "archery", "handball", "cricket"),
    "customers": ("farmers", "hospitals", "schools", "city councils", "shipyards", "households"),
    "logo": ("a red fox", "a golden anchor", "a white tower", "a green leaf", "a black swan", "a blue wave"),
    "colours": ("green and gold", "red and white", "blue and silver", "black and yellow", "purple and grey"),
    "team": ("the Herons", "the Otters", "the Falcons", "the Badgers", "the Pikes", "the Ravens"),
    "fish": ("trout", "carp", "pike", "salmon", "perch", "eels"),
    "frozen": ("every winter", "in hard winters", "once a decade", "almost never"),
}

# Question templates by style: ASK[r] asks for r's object of {x}; PHRASE[r] names that object.
QUESTION_STYLES = ("direct", "descriptive")
ASK: dict[str, dict[str, tuple[str, ...]]] = {
    "direct": {
        "born_in": ("Where was {x} born?", "In which city was {x} born?"),
        "educated_at": ("Which university did {x} attend?", "Where did {x} go to university?"),
        "spouse": ("Who is {x} married to?", "Who is the spouse of {x}?"),
        "works_for": ("Which company does {x} work for?", "Who employs {x}?"),
        "located_in": ("In which country is {x}?", "Which country is {x} part of?"),
        "capital": ("What is the capital of {x}?", "Which city is the capital of {x}?"),
        "founded_by": ("Who founded {x}?", "Who is the founder of {x}?"),
        "headquartered_in": ("Where is {x} headquartered?", "In which city is {x} based?"),
        "campus_in": ("In which city can one find {x}?", "Which city is {x} found in?"),
        "flows_through": ("Which city does {x} flow through?", "Through which city does {x} pass?"),
        "rises_in": ("In which country does {x} rise?", "Which country does {x} start in?"),
        "longest_river": ("What is the longest river rising in {x}?", "Which river is the longest to rise in {x}?"),
    },
    "descriptive": {
        "born_in": ("What city was {x} born in?", "What is the birth city of {x}?"),
        "educated_at": ("What school did {x} graduate from?", "At what university was {x} a student?"),
        "spouse": ("What is the name of the husband or wife of {x}?", "Whom did {x} marry?"),
        "works_for": ("What firm pays the wages of {x}?", "For what company is {x} on the staff?"),
        "located_in": ("What nation is {x} located in?", "What country contains {x}?"),
        "capital": ("What is the name of the capital city of {x}?", "From what city is {x} governed?"),
        "founded_by": ("Who created the firm {x}?", "What is the name of the person who set up {x}?"),
        "headquartered_in": ("What city is {x} run from?", "In what city does {x} keep its head office?"),
        "campus_in": ("What city is home to {x}?", "In what city does {x} have its campus?"),
        "flows_through": ("What city lies on {x}?", "What city does {x} run through?"),
        "rises_in": ("What country is the source of {x} in?", "In what country does {x} have its source?"),
        "longest_river": ("What river is the longest one of {x}?", "Of the rivers of {x}, which is the longest?"),
    },
}
PHRASE: dict[str, dict[str, tuple[str, ...]]] = {
    "direct": {
        "born_in": ("the birthplace of {x}", "the city where {x} was born"),
        "educated_at": ("the alma mater of {x}", "the university that {x} attended"),
        "spouse": ("the spouse of {x}", "the person married to {x}"),
        "works_for": ("the employer of {x}", "the company that employs {x}"),
        "located_in": ("the country containing {x}", "the country where {x} lies"),
        "capital": ("the capital of {x}", "the capital city of {x}"),
        "founded_by": ("the founder of {x}", "the person who founded {x}"),
        "headquartered_in": ("the home city of {x}", "the city where {x} is based"),
        "campus_in": ("the city hosting {x}", "the city where one finds {x}"),
        "flows_through": ("the city that {x} flows through", "the city along {x}"),
        "rises_in": ("the country where {x} rises", "the source country of {x}"),
        "longest_river": ("the longest river rising in {x}", "the longest river to rise in {x}"),
    },
    "descriptive": {
        "born_in": ("the birth city of {x}", "the town {x} was born in"),
        "educated_at": ("the university {x} graduated from", "the school where {x} was a student"),
        "spouse": ("the husband or wife of {x}", "the person {x} wed"),
        "works_for": ("the firm paying {x}", "the company {x} is on the staff of"),
        "located_in": ("the nation {x} is located in", "the country that contains {x}"),
        "capital": ("the city governing {x}", "the main city of {x}"),
        "founded_by": ("the person who set up {x}", "the creator of {x}"),
        "headquartered_in": ("the city {x} is run from", "the head office city of {x}"),
        "campus_in": ("the city that is home to {x}", "the campus city of {x}"),
        "flows_through": ("the city {x} runs through", "the city lying on {x}"),
        "rises_in": ("the country where {x} has its source", "the source nation of {x}"),
        "longest_river": ("the longest river belonging to {x}", "the longest river found in {x}"),
    },
}


def make_stems(rng: random.Random, count: int) -> list[tuple[str, ...]]:
    """`count` unique names as their 2-3 syllables, no name a substring of another.

    The substring rule keeps every name (and so every gold answer) out of every other name, so
    "the answer is not a substring of the question" and exact-match checks never collide.
    """
    if count > len(SYLLABLES) ** 2:
        raise ValueError(f"cannot make {count} names from {len(SYLLABLES)} syllables")
    stems: list[tuple[str, ...]] = []
    words: list[str] = []
    for _ in range(100 * count):
        if len(stems) == count:
            break
        syllables = tuple(rng.sample(SYLLABLES, rng.choice((2, 2, 3))))
        word = "".join(syllables)
        if word in NOT_NAMES or any(word in w or w in word for w in words):
            continue
        stems.append(syllables)
        words.append(word)
    if len(stems) < count:
        raise ValueError(f"only {len(stems)} of {count} distinct names could be drawn")
    return stems


def join_names(names: list[str]) -> str:
    """"A", "A and B", "A, B and C"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
