"""Deterministic synthetic legal-case corpus in the JUSTICE csv schema, with a documented latent outcome rule.

Real Supreme Court case text cannot ship with the suite, so the default profile generates cases that read like
Oyez case facts (HTML `<p>` paragraphs, entities, parties, procedural history) and whose outcome follows a
known rule, so every later stage can be checked against the truth (Bayes accuracy, rationale recall).

Latent rule (label 1 = the first party, the petitioner, wins). Each case carries 1-3 cue families (70% / 25% /
5%), drawn by FAMILY_WEIGHT, each written as one of several paraphrases placed early in the facts:

    | cue family         | paraphrases | where it counts                          | logit effect           |
    |--------------------|-------------|------------------------------------------|------------------------|
    | (intercept)        |             | every case                               | +1.0                   |
    | hearing_denied     | 5           | every issue area                         | +3.4                   |
    | settled_precedent  | 5           | every issue area                         | -3.2                   |
    | untimely_filing    | 5           | every issue area                         | -3.0                   |
    | warrantless_search | 5           | Criminal Procedure only (else 0)         | +3.6                   |
    | retroactive_law    | 5           | Criminal Procedure, Due Process          | +3.4                   |
    |                    |             | Economic Activity, Federal Taxation      | -3.4                   |
    |                    |             | other areas                              | 0                      |
    | agency_reversal    | 4           | alone                                    | -3.2                   |
    | + reliance         | 4           | only together with agency_reversal       | +6.6 (net +3.4)        |

    p = (1 - NOISE) * sigmoid(logit) + NOISE * (1 - sigmoid(logit)),  label ~ Bernoulli(p),  NOISE = 0.03

The agency pair is drawn as reversal only / reliance only / both (40/15/45%); the warrantless-search cue also
appears, with no effect, outside Criminal Procedure. In 80% of cases the cue sentences lead the facts (as in many
short case summaries), otherwise they follow the opening background sentence; about 4% of cases have one cue placed
late in the facts, beyond a short reading window.
`rule_prob` in the side file is this p; a cue is listed as deciding a case only where its effect is non-zero
there (reliance only with agency_reversal). The area-dependent and interaction cues are what a bag-of-words
model cannot represent, which leaves room between a TF-IDF baseline and the Bayes accuracy.
Issue-area task (`task="issue_area"`): the label is the case's issue area. Its text signal is spread out and
overlaps between related areas, as in real case facts: each case gets AREA_TERMS_PER_CASE sentences of legal
vocabulary, each drawn from its own area with probability OWN_AREA_TERMS and otherwise from a related area
(RELATED_AREAS), and with probability BORROWED_OPENING the opening background sentence itself comes from a related
area. These draws use a separate random stream, so the outcome task's output (the default) is unchanged.

Style `justice` (`synthetic_style: justice`, the justice profile's synthetic fallback) imitates the shape of the
real JUSTICE file instead of the short default cases: the issue areas in the real file's shares (JUSTICE_AREAS; at
the real file's size the smallest, Interstate Relations, falls under a `min_class_count` of 40 and is merged into
Other, and Attorneys sits just above it, where the real file merges four small areas), facts about twice as long
(JUSTICE_WORDS: model input of 165 / 213 / 282 WordPiece tokens at the quartiles, 90th percentile 359, 99th 553,
measured on 2,999 cases; the real file: 159 / 213 / 275, 346, 503), and area vocabulary spread through the whole
facts, one sentence per JUSTICE_WORDS_PER_TERM words on average, so that a model reading only the first 128 tokens
sees part of the topic signal that a bag-of-words model of the full text sees, as on the real file.

Measured through `helpers.data.prepare` at the default profile's n=1000, seed=7, split_seed=42, max_len=64:
598/199/199 cases, majority rate 0.605, Bayes accuracy 0.860 / 0.884 / 0.874 (train/val/test), TF-IDF + logistic
regression 0.784 / 0.754 (val/test), median 94 words (p95 174), 97% of cases longer than 64 WordPiece tokens
(35% longer than 128), 95% of cue spans inside the first 64 tokens.
"""
from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

INTERCEPT = 1.0
NOISE = 0.03
BLANK_LABEL_RATE = 0.005
DUPLICATE_RATE = 0.005
CUES_FIRST_RATE = 0.8  # share of cases whose cue sentences come before the opening background sentence
EARLY_FILLER_RATE = 0.2  # share of cases with a background sentence before the cues
LATE_CUE_RATE = 0.04  # cues occasionally sit late in the facts, as in real opinions
COLUMNS = [
    "ID", "name", "href", "docket", "term", "first_party", "second_party", "facts", "facts_len",
    "majority_vote", "minority_vote", "first_party_winner", "decision_type", "disposition", "issue_area",
]

JUSTICE_AREAS = {  # the real JUSTICE file's issue-area shares (2,866 labelled cases; Other's four areas as two)
    "Criminal Procedure": 0.279, "Civil Rights": 0.179, "Economic Activity": 0.164, "First Amendment": 0.117,
    "Judicial Power": 0.103, "Due Process": 0.040, "Federalism": 0.040, "Privacy": 0.023, "Unions": 0.019,
    "Federal Taxation": 0.017, "Attorneys": 0.013, "Interstate Relations": 0.006,
}
JUSTICE_WORDS = (150, 0.41, 40, 640)  # facts in words: lognormal median, sigma, clipped to [min, max]
JUSTICE_WORDS_PER_TERM = 55  # justice style: one area-vocabulary sentence per this many words, on average
STYLES = ("short", "justice")
AREAS = {  # issue area -> sampling weight
    "Criminal Procedure": 0.26, "Civil Rights": 0.14, "Economic Activity": 0.14, "First Amendment": 0.08,
    "Judicial Power": 0.09, "Federalism": 0.05, "Due Process": 0.07, "Privacy": 0.03, "Unions": 0.05,
    "Federal Taxation": 0.05, "Attorneys": 0.02, "Interstate Relations": 0.02,
}

CUES: dict[str, list[str]] = {
    "hearing_denied": [
        "the lower court ruled without allowing the petitioner to present any evidence",
        "the trial judge refused to hear the petitioner's witnesses",
        "the court of appeals decided the case on a ground that no party had briefed",
        "the penalty was imposed before the petitioner received any hearing",
        "the petitioner was never given notice of the proceeding against it",
    ],
    "settled_precedent": [
        "the claim was squarely foreclosed by settled precedent",
        "every circuit to consider the question had rejected the same argument",
        "the challenged rule had been applied without objection for decades",
        "the petitioner conceded that existing precedent cut against its position",
        "the argument had been considered and rejected in several earlier cases",
    ],
    "untimely_filing": [
        "the petitioner filed its appeal after the statutory deadline had passed",
        "the notice of appeal was filed several weeks late",
        "the objection was raised for the first time on appeal",
        "the petitioner did not exhaust the available administrative remedies",
        "the complaint was filed long after the limitations period expired",
    ],
    "warrantless_search": [
        "officers searched the home without a warrant",
        "the police entered the apartment without obtaining a warrant",
        "agents seized the records without judicial authorization",
        "the search was conducted without a warrant or valid consent",
        "investigators tracked the vehicle for weeks without a warrant",
    ],
    "retroactive_law": [
        "the statute was enacted after the conduct at issue",
        "the law was applied to conduct that predated it",
        "the amendment took effect only after the events in question",
        "the regulation was applied retroactively to past transactions",
        "the penalty provision was adopted after the relevant acts occurred",
    ],
    "agency_reversal": [
        "the agency reversed its long-standing interpretation",
        "the agency abruptly abandoned its prior position",
        "the department rescinded guidance it had issued years earlier",
        "the commission changed course without explaining the shift",
    ],
    "reliance": [
        "the petitioner had relied on the earlier guidance for years",
        "the company had invested heavily in reliance on the prior rule",
        "the petitioner had structured its operations around the old policy",
        "many businesses had relied on the previous interpretation",
    ],
}
N_CUES = {1: 0.7, 2: 0.25, 3: 0.05}  # how many cue families a case carries
FAMILY_WEIGHT = {  # relative chance of each family being drawn; the agency pair counts as one family
    "hearing_denied": 1.3, "settled_precedent": 0.7, "untimely_filing": 0.6,
    "warrantless_search": 1.0, "retroactive_law": 0.9, "agency_pair": 0.9,
}
RETRO_SIGN = {"Criminal Procedure": 1, "Due Process": 1, "Economic Activity": -1, "Federal Taxation": -1}
PAIR_STATES = {"reversal": 0.4, "reliance": 0.15, "both": 0.45}  # agency_reversal x reliance, given the pair
EFFECT = {
    "hearing_denied": 3.4, "settled_precedent": -3.2, "untimely_filing": -3.0, "warrantless_search": 3.6,
    "retroactive_law": 3.4, "agency_reversal": -3.2, "reliance": 6.6,
}

CUE_LEADS = [
    "According to the record, {cue}.", "The parties agreed that {cue}.", "It was undisputed that {cue}.",
    "The record showed that {cue}.", "During the proceedings it emerged that {cue}.", "In this case, {cue}.",
    "The petition stressed that {cue}.", "Notably, {cue}.", "As the briefs explained, {cue}.",
    "The respondent did not dispute that {cue}.", "Testimony established that {cue}.",
]

FIRST_NAMES = [
    "James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda", "William", "Elizabeth", "David",
    "Barbara", "Richard", "Susan", "Joseph", "Jessica", "Thomas", "Sarah", "Charles", "Karen", "Daniel", "Nancy",
    "Matthew", "Lisa", "Anthony", "Betty", "Mark", "Margaret", "Donald", "Sandra", "Steven", "Ashley", "Paul",
    "Dorothy", "Andrew", "Kimberly", "Joshua", "Emily", "Kenneth", "Donna", "Kevin", "Michelle", "Brian", "Carol",
    "George", "Amanda", "Edward", "Melissa", "Ronald", "Deborah", "Timothy", "Stephanie", "Jason", "Rebecca",
    "Ernesto", "Clarence", "Dolores", "Otis", "Rosa", "Harold", "Yvonne", "Luis", "Mei", "Tariq", "Ingrid",
]
LAST_NAMES = [
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez", "Martinez",
    "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee",
    "Perez", "Thompson", "White", "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
    "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker",
    "Hall", "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Gideon", "Escobedo", "Terry", "Katz", "Mapp",
    "Kowalski", "O'Brien", "Okafor", "Lindqvist", "Abernathy", "Delgado", "Fitzgerald", "Whitaker", "Yamamoto",
]
STATES = [
    "Alabama", "Arizona", "California", "Colorado", "Connecticut", "Florida", "Georgia", "Illinois", "Indiana",
    "Kansas", "Kentucky", "Louisiana", "Maryland", "Massachusetts", "Michigan", "Minnesota", "Mississippi",
    "Missouri", "Nebraska", "Nevada", "New Jersey", "New York", "North Carolina", "Ohio", "Oklahoma", "Oregon",
    "Pennsylvania", "South Carolina", "Tennessee", "Texas", "Utah", "Virginia", "Washington", "Wisconsin",
]
CITIES = [
    "Chicago", "Boston", "Denver", "Atlanta", "Phoenix", "Seattle", "Detroit", "Memphis", "Tulsa", "Omaha",
    "Newark", "Cleveland", "Richmond", "Sacramento", "Baltimore", "Milwaukee", "Pittsburgh", "Houston", "Albany",
    "Louisville", "Birmingham", "Spokane", "Tacoma", "Dayton", "Savannah", "Boise", "Madison", "Trenton",
]
COMPANY_STEMS = [
    "Acme", "Northern Pacific", "Great Lakes", "Atlantic", "Summit", "Pioneer", "Keystone", "Liberty", "Cascade",
    "Union Mutual", "Prairie", "Harbor", "Meridian", "Bluegrass", "Granite", "Sterling", "Redwood", "Frontier",
]
COMPANY_SUFFIXES = [
    "Railroad Co.", "Insurance Co.", "Steel Corp.", "Holdings, Inc.", "Bank", "Mining Co.", "Telephone Co.",
    "Chemical Corp.", "Shipping Lines", "Gas & Electric", "Sons & Co.", "Trust Co.",
]
AGENCIES = [
    "Environmental Protection Agency", "Federal Communications Commission", "Securities and Exchange Commission",
    "National Labor Relations Board", "Department of Labor", "Federal Trade Commission", "Internal Revenue Service",
    "Department of Health and Human Services", "Federal Energy Regulatory Commission", "Department of Education",
]
UNIONS = [
    "International Brotherhood of Teamsters", "United Steelworkers", "American Federation of Teachers",
    "United Mine Workers", "Service Employees International Union", "Brotherhood of Railroad Trainmen",
]
CIRCUITS = [
    "First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh", "Eighth", "Ninth", "Tenth", "Eleventh",
    "D.C.",
]
AREA_BACKGROUND = {
    "Criminal Procedure": [
        "{p1} was charged with {crime} after an investigation in {city}.",
        "Prosecutors in {state} brought charges of {crime} against {p1}.",
        "{p1} was convicted of {crime} and sentenced to {years} years in prison.",
        "At trial, {p1} moved to suppress the evidence gathered by the police.",
    ],
    "Civil Rights": [
        "{p1} alleged discrimination on the basis of {ground} in violation of federal law.",
        "{p1} sued under Section 1983, claiming officials in {city} had violated {pron} civil rights.",
        "The complaint alleged that {p2} had treated applicants differently because of their {ground}.",
    ],
    "Economic Activity": [
        "{p1} and {p2} had a long commercial relationship involving {goods}.",
        "The dispute arose from a contract for the delivery of {goods} worth {money}.",
        "{p2} claimed that {p1} had violated federal antitrust law in the market for {goods}.",
    ],
    "First Amendment": [
        "{p1} distributed leaflets about {topic} near a public building in {city}.",
        "The dispute concerned a local ordinance restricting speech about {topic}.",
        "{p1} argued that the rule punished protected expression about {topic}.",
    ],
    "Judicial Power": [
        "The case raised questions about the authority of federal courts to hear disputes over {topic}.",
        "{p1} sought review of an order concerning {topic} entered by a federal court in {state}.",
    ],
    "Federalism": [
        "{state} passed a law regulating {goods} that conflicted with a federal program.",
        "The case concerned whether federal law displaced {state}'s regulation of {goods}.",
    ],
    "Due Process": [
        "{p1} lost {pron} {benefit} after a decision by officials in {state}.",
        "State officials terminated the {benefit} of {p1} in {year}.",
    ],
    "Privacy": [
        "{p1} objected to the collection of personal records about {topic}.",
        "The dispute concerned whether {p2} could disclose private information about {p1}.",
    ],
    "Unions": [
        "{p1} challenged a collective bargaining agreement covering workers in {city}.",
        "The dispute involved union dues and a strike at a plant in {city}.",
    ],
    "Federal Taxation": [
        "The Internal Revenue Service assessed a deficiency of {money} against {p1}.",
        "{p1} claimed a deduction of {money} on its federal return for {year}.",
    ],
    "Attorneys": [
        "{p1}, a lawyer licensed in {state}, was disciplined for advertising {pron} services.",
        "The state bar of {state} sanctioned {p1} for a letter sent to prospective clients.",
    ],
    "Interstate Relations": [
        "{state} and a neighbouring state disputed rights to water from a shared river.",
        "The dispute concerned the boundary between {state} and a neighbouring state.",
    ],
}
FILLER = [
    "The events took place in {city} in {month} {year}.",
    "Over the following {n} months, the parties exchanged letters but did not settle the matter.",
    "{p2} maintained that it had acted in good faith throughout.",
    "Several witnesses testified about what happened on the day in question.",
    "The record includes affidavits from {n} employees and a report prepared by an outside consultant.",
    "{p1} had lived in {city} for {n} years before the dispute began.",
    "The parties disagreed sharply about the meaning of the relevant provision.",
    "A local newspaper in {city} reported on the dispute at the time.",
    "Before the lawsuit, {p1} wrote to officials in {state} asking for an explanation.",
    "The case drew amicus briefs from {n} organizations on both sides.",
    "Counsel for {p2} argued that the matter was of great practical importance in {state}.",
    "The dispute involved roughly {money} in contested payments.",
    "Both sides submitted lengthy briefs on the history of the provision.",
    "Officials in {state} described the policy as a routine administrative measure.",
    "The parties stipulated to most of the underlying facts.",
    "In {month} {year}, {p1} hired new counsel and renewed the challenge.",
    "The matter attracted attention from lawmakers in {state}.",
    "{p2} pointed out that similar practices were common across the country.",
    "A hearing officer took testimony over {n} days.",
    "The original dispute began as a minor disagreement over {topic}.",
    "Neither party disputed the authenticity of the documents in the record.",
    "{p1} argued that the consequences of the ruling would reach well beyond {city}.",
    "The trial record runs to several thousand pages.",
    "An expert retained by {p2} testified about industry practice regarding {goods}.",
    "The federal government filed a brief supporting neither party.",
    "Discovery lasted nearly {n} months and produced extensive documentary evidence.",
    "The case was consolidated with a related dispute from {state}.",
    "Press coverage in {city} focused on the broader debate over {topic}.",
    "{p1} had no prior involvement with the courts before this dispute.",
    "The relevant events unfolded over a period of about {n} weeks.",
]
PROCEDURE_FIRST = [
    "The United States District Court for the {district} District of {state} ruled for {winner}.",
    "A federal district court in {state} granted summary judgment to {winner}.",
    "The trial court entered judgment for {winner}.",
    "The {state} Supreme Court ruled for {winner}.",
    "A jury returned a verdict for {winner}.",
]
PROCEDURE_SECOND = [
    "The U.S. Court of Appeals for the {circuit} Circuit reversed.",
    "The U.S. Court of Appeals for the {circuit} Circuit affirmed.",
    "On appeal, the {circuit} Circuit affirmed in a divided opinion.",
    "The {circuit} Circuit reversed, creating a split among the circuits.",
    "The state appellate court affirmed without opinion.",
]
PROCEDURE_LAST = [
    "The Supreme Court granted certiorari.", "The Supreme Court agreed to hear the case.",
    "The Court granted review to resolve the conflict.", "Certiorari was granted.",
]
SLOTS = {
    "crime": ["armed robbery", "drug trafficking", "fraud", "burglary", "murder", "tax evasion", "arson",
              "possession of a firearm", "kidnapping", "bribery", "money laundering", "assault"],
    "ground": ["race", "sex", "age", "disability", "national origin", "religion"],
    "goods": ["grain", "natural gas", "steel", "medical devices", "timber", "railroad freight", "cable television",
              "insurance policies", "crude oil", "pharmaceuticals", "coal", "software licenses"],
    "topic": ["a military draft", "school prayer", "public housing", "a labor strike", "election financing",
              "zoning rules", "campus protests", "highway construction", "water rights", "veterans' benefits"],
    "benefit": ["welfare benefits", "public employment", "driver's license", "disability benefits",
                "teaching certificate", "pension"],
    "month": ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"],
    "district": ["Northern", "Southern", "Eastern", "Western", "Middle"],
    "pron": ["his", "her"],
}


@dataclass
class _Case:
    area: str
    first_party: str
    second_party: str
    p1_short: str
    p2_short: str
    cues: list[tuple[str, str]]  # (family, phrase) carried by the case
    deciding: list[tuple[str, str]]
    prob: float


# --- issue-area task: overlapping area vocabulary (a separate random stream; see the module docstring)
OWN_AREA_TERMS = 0.6  # chance that an area-vocabulary sentence comes from the case's own area
BORROWED_OPENING = 0.25  # chance that the opening background sentence comes from a related area
AREA_TERMS_PER_CASE = {0: 0.15, 1: 0.5, 2: 0.35}  # how many area-vocabulary sentences a case gets
AREA_STREAM = 0x1A5E  # offset of the issue-area random stream's seed
RELATED_AREAS = {
    "Criminal Procedure": ["Due Process", "Privacy", "Civil Rights"],
    "Civil Rights": ["Due Process", "First Amendment", "Criminal Procedure", "Unions"],
    "Economic Activity": ["Federal Taxation", "Federalism", "Unions", "Judicial Power"],
    "First Amendment": ["Civil Rights", "Privacy", "Attorneys"],
    "Judicial Power": ["Federalism", "Due Process", "Economic Activity"],
    "Federalism": ["Judicial Power", "Economic Activity", "Interstate Relations"],
    "Due Process": ["Criminal Procedure", "Civil Rights", "Judicial Power"],
    "Privacy": ["Criminal Procedure", "First Amendment", "Civil Rights"],
    "Unions": ["Economic Activity", "Civil Rights"],
    "Federal Taxation": ["Economic Activity", "Federalism"],
    "Attorneys": ["First Amendment", "Judicial Power", "Due Process"],
    "Interstate Relations": ["Federalism", "Judicial Power"],
}
AREA_TERMS = {  # phrases typical of an area; several recur across related areas on purpose
    "Criminal Procedure": ["the admissibility of the confession", "the jury instructions at trial",
                           "the sentencing guidelines", "the right to counsel during questioning",
                           "the suppression of the evidence", "the prosecutor's closing argument"],
    "Civil Rights": ["equal protection of the laws", "a pattern of discriminatory treatment",
                     "the hiring and promotion practices", "the right to vote", "the Civil Rights Act",
                     "damages for the violation of federal rights"],
    "Economic Activity": ["the terms of the commercial contract", "competition in the regional market",
                          "the securities disclosures", "the liability of the manufacturer",
                          "the rates charged to customers", "federal regulation of the industry"],
    "First Amendment": ["the freedom of speech", "the free exercise of religion", "a prior restraint on publication",
                        "the content of the message", "the establishment of religion", "expressive conduct"],
    "Judicial Power": ["the jurisdiction of the federal courts", "the standing of the plaintiffs",
                       "whether the dispute was moot", "the scope of appellate review", "a class action",
                       "the finality of the judgment"],
    "Federalism": ["the powers reserved to the states", "preemption by federal law",
                   "the limits of the commerce power", "state sovereign immunity", "a federal spending condition",
                   "the balance between state and federal authority"],
    "Due Process": ["the procedures required before a deprivation", "notice and an opportunity to be heard",
                    "fundamental fairness", "the vagueness of the statute", "the hearing afforded by the state",
                    "the property interest at stake"],
    "Privacy": ["the confidentiality of personal records", "the reasonable expectation of privacy",
                "the disclosure of medical information", "intimate personal decisions",
                "surveillance of private communications", "the collection of personal data"],
    "Unions": ["the collective bargaining agreement", "the duty of fair representation", "the strike and picketing",
               "the union's dues and fees", "the National Labor Relations Act", "the grievance arbitration"],
    "Federal Taxation": ["the deduction claimed on the return", "the assessment of the tax deficiency",
                         "the Internal Revenue Code", "the taxable income of the business",
                         "the refund of taxes paid", "the valuation of the estate"],
    "Attorneys": ["the rules of professional conduct", "the attorney's fees award",
                  "the discipline imposed by the state bar", "the solicitation of clients",
                  "the lawyer's conflict of interest", "admission to the bar"],
    "Interstate Relations": ["the boundary between the states", "the interstate compact",
                             "the apportionment of the river's water", "the Special Master's report",
                             "the original jurisdiction of the Court", "the shared resources of the states"],
}
AREA_LEADS = [
    "The case turned in part on {term}.", "The briefs devoted much attention to {term}.",
    "Much of the argument concerned {term}.", "The lower courts also addressed {term}.",
    "The parties also disputed {term}.", "Amici focused on {term}.",
]


def _related(area_rng: random.Random, area: str) -> str:
    return area_rng.choice(RELATED_AREAS[area])


def _with_area_signal(area_rng: random.Random, case: _Case, year: int, sentences: list[str],
                      per_words: int = 0) -> list[str]:
    """The issue-area task's sentences: area vocabulary (own or related areas) and, sometimes, a borrowed opening
    (every draw from `area_rng`, the issue-area stream). `per_words` > 0 (justice style): a Poisson number of
    vocabulary sentences, one per `per_words` words on average, placed anywhere in the facts."""
    out = list(sentences)
    if area_rng.random() < BORROWED_OPENING:
        opening = _fill(area_rng, area_rng.choice(AREA_BACKGROUND[_related(area_rng, case.area)]), case, year)
        for i, sent in enumerate(out):  # replace the area's opening sentence wherever it stands
            if any(_matches(sent, t) for t in AREA_BACKGROUND[case.area]):
                out[i] = _cap(opening)
                break
    if per_words:
        words = sum(len(x.split()) for x in out)
        k = int(np.random.default_rng(area_rng.getrandbits(32)).poisson(words / per_words))
    else:
        k = area_rng.choices(list(AREA_TERMS_PER_CASE), weights=list(AREA_TERMS_PER_CASE.values()))[0]
    for _ in range(k):
        source = case.area if area_rng.random() < OWN_AREA_TERMS else _related(area_rng, case.area)
        sent = area_rng.choice(AREA_LEADS).format(term=area_rng.choice(AREA_TERMS[source]))
        out.insert(area_rng.randint(1, max(1, len(out) - 1)), sent)
    return out


def _matches(sentence: str, template: str) -> bool:
    """Whether `sentence` was filled from `template` (its fixed words, in order)."""
    parts = [re.escape(x) for x in re.split(r"\{[a-z0-9]+\}", template)]
    return re.fullmatch(".*".join(parts), sentence[0].lower() + sentence[1:]) is not None or \
        re.fullmatch(".*".join(parts), sentence) is not None


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _rule_logit(area: str, families: set[str]) -> tuple[float, set[str]]:
    """Logit of the latent rule and the cue families that are decisive for this case."""
    logit, deciding = INTERCEPT, set()
    for fam in ("hearing_denied", "settled_precedent", "untimely_filing"):
        if fam in families:
            logit += EFFECT[fam]
            deciding.add(fam)
    if "warrantless_search" in families and area == "Criminal Procedure":
        logit += EFFECT["warrantless_search"]
        deciding.add("warrantless_search")
    if "retroactive_law" in families and area in RETRO_SIGN:
        logit += RETRO_SIGN[area] * EFFECT["retroactive_law"]
        deciding.add("retroactive_law")
    if "agency_reversal" in families:
        logit += EFFECT["agency_reversal"]
        deciding.add("agency_reversal")
        if "reliance" in families:
            logit += EFFECT["reliance"]
            deciding.add("reliance")
    return logit, deciding


def rule_prob(area: str, families: set[str]) -> float:
    """p(first party wins | issue area, cue families) under the latent rule, label noise included."""
    s = _sigmoid(_rule_logit(area, families)[0])
    return (1 - NOISE) * s + NOISE * (1 - s)


def _person(rng: random.Random) -> str:
    return f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"


def _company(rng: random.Random) -> str:
    return f"{rng.choice(COMPANY_STEMS)} {rng.choice(COMPANY_SUFFIXES)}"


def _parties(rng: random.Random, area: str) -> tuple[str, str]:
    """(first party, second party) typical of the issue area."""
    state = rng.choice(STATES)
    if area == "Criminal Procedure":
        return _person(rng), rng.choice([state, "United States", "United States", f"State of {state}"])
    if area in ("Economic Activity", "Federalism"):
        pool = [_company(rng), state, "United States", _company(rng), rng.choice(AGENCIES)]
        a, b = rng.sample(pool, 2)
        return a, b
    if area == "Federal Taxation":
        taxpayer = rng.choice([_person(rng), _company(rng)])
        return (taxpayer, "Commissioner of Internal Revenue") if rng.random() < 0.7 else (
            "United States", taxpayer)
    if area == "Unions":
        return rng.choice([(rng.choice(UNIONS), _company(rng)), (_person(rng), rng.choice(UNIONS)),
                           ("National Labor Relations Board", _company(rng))])
    if area == "Interstate Relations":
        a, b = rng.sample(STATES, 2)
        return a, b
    other = rng.choice([state, f"City of {rng.choice(CITIES)}", rng.choice(AGENCIES), _company(rng),
                        f"{rng.choice(['Board of Education of', 'County of', 'Police Department of'])} "
                        f"{rng.choice(CITIES)}", "United States"])
    return (_person(rng), other) if rng.random() < 0.75 else (other, _person(rng))


def _short(party: str) -> str:
    """How the facts refer to a party after first mention."""
    words = party.split()
    if party in STATES or party.startswith(("United States", "State of", "City of")):
        return party
    if len(words) == 2 and words[0] in FIRST_NAMES:
        return words[1]
    return party


def _fill(rng: random.Random, template: str, case: _Case, year: int) -> str:
    values = {k: rng.choice(v) for k, v in SLOTS.items()}
    values.update(
        p1=case.p1_short, p2=case.p2_short, city=rng.choice(CITIES), state=rng.choice(STATES),
        year=str(year - rng.randint(1, 6)), years=str(rng.randint(2, 30)), n=str(rng.randint(2, 14)),
        money=f"${rng.randint(2, 900)},{rng.randint(0, 999):03d}", circuit=rng.choice(CIRCUITS),
        winner=rng.choice([case.p1_short, case.p2_short]),
    )
    return template.format(**values).replace("..", ".")  # "Acme Steel Corp." ending a sentence


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _facts(rng: random.Random, case: _Case, year: int, target_words: int, reuse_filler: bool = False) -> list[str]:
    """Sentences of the facts: background, cues early, filler, procedural history (`reuse_filler`: the filler
    sentences may recur, for facts longer than the filler pool)."""
    opening = _fill(rng, rng.choice(AREA_BACKGROUND[case.area]), case, year)
    cue_sents = [rng.choice(CUE_LEADS).format(cue=phrase) for _, phrase in case.cues]
    procedure = [_fill(rng, rng.choice(PROCEDURE_FIRST), case, year)]
    if target_words > 60:
        procedure.append(_fill(rng, rng.choice(PROCEDURE_SECOND), case, year))
    procedure.append(rng.choice(PROCEDURE_LAST))
    used = sum(len(s.split()) for s in [opening, *cue_sents, *procedure])
    fillers: list[str] = []
    pool = rng.sample(FILLER, len(FILLER))
    added = True  # a refilled pool is only drawn from again if the last pass over it fitted a sentence
    while (pool or (reuse_filler and added)) and used < target_words:
        if not pool:
            pool, added = rng.sample(FILLER, len(FILLER)), False
        sent = _fill(rng, pool.pop(), case, year)
        if used + len(sent.split()) <= target_words + 6:
            fillers.append(sent)
            used += len(sent.split())
            added = True
    # Most cues follow the opening sentence directly, so the default profile's 64 tokens usually reach them.
    n_early = 1 if rng.random() < EARLY_FILLER_RATE else 0
    early = [opening] + fillers[:n_early]
    late = fillers[n_early:]
    if cue_sents and rng.random() < LATE_CUE_RATE and late:
        late.insert(rng.randint(len(late) // 2, len(late)), cue_sents.pop())
    if rng.random() < CUES_FIRST_RATE:  # the deciding facts lead, as in many short case summaries
        return [_cap(s) for s in cue_sents + early + late + procedure]
    return [_cap(s) for s in early + cue_sents + late + procedure]


def _html(rng: random.Random, sentences: list[str]) -> str:
    """Sentences as Oyez-style HTML paragraphs with escaped entities."""
    escaped = [s.replace("&", "&amp;").replace("'", "&#39;").replace('"', "&quot;") for s in sentences]
    n_par = 1 if len(escaped) < 4 else rng.randint(1, 3)
    cuts = sorted(rng.sample(range(1, len(escaped)), n_par - 1)) if n_par > 1 else []
    bounds = [0, *cuts, len(escaped)]
    sep = "&nbsp; " if rng.random() < 0.1 else " "
    paras = [sep.join(escaped[a:b]) for a, b in zip(bounds, bounds[1:])]
    return "\n".join(f"<p>{p}</p>" for p in paras)


def _draw_case(rng: random.Random, areas: dict[str, float] = AREAS) -> _Case:
    area = rng.choices(list(areas), weights=list(areas.values()))[0]
    first, second = _parties(rng, area)
    k = rng.choices(list(N_CUES), weights=list(N_CUES.values()))[0]
    weights = dict(FAMILY_WEIGHT)
    if area != "Criminal Procedure":  # search cues are rarer, and irrelevant, outside criminal cases
        weights["warrantless_search"] *= 0.35
    families: set[str] = set()
    for _ in range(k):
        names = [f for f in weights if f not in families]
        families.add(rng.choices(names, weights=[weights[f] for f in names])[0])
    if "agency_pair" in families:
        families.discard("agency_pair")
        state = rng.choices(list(PAIR_STATES), weights=list(PAIR_STATES.values()))[0]
        families |= {"reversal": {"agency_reversal"}, "reliance": {"reliance"},
                     "both": {"agency_reversal", "reliance"}}[state]
    order = sorted(families)
    rng.shuffle(order)
    cues = [(f, rng.choice(CUES[f])) for f in order]
    _, deciding_fams = _rule_logit(area, families)
    return _Case(area, first, second, _short(first), _short(second), cues,
                 [c for c in cues if c[0] in deciding_fams], rule_prob(area, families))


def generate_cases(n: int, seed: int, task: str = "outcome", style: str = "short") -> tuple[pd.DataFrame, list[dict]]:
    """n synthetic cases as a JUSTICE-schema frame and their rationale records, without touching disk.

    `task="issue_area"` adds the issue-area signal (overlapping area vocabulary) from a separate random stream;
    `task="outcome"` (the default) writes exactly what it always wrote. `style="justice"` imitates the real file's
    lengths, class shares and spread-out topic vocabulary (module docstring); "short" is the default corpus.
    """
    if style not in STYLES:
        raise ValueError(f"parameter synthetic_style: unknown style {style!r} ({' | '.join(STYLES)})")
    if n < 1:
        raise ValueError(f"synthetic_n must be a positive number of cases, got {n}")
    if task not in ("outcome", "issue_area"):
        raise ValueError(f"parameter task: unknown task {task!r} (outcome | issue_area)")
    area_rng = random.Random(seed * 1_000_003 + AREA_STREAM) if task == "issue_area" else None
    rng = random.Random(seed)
    nprng = np.random.Generator(np.random.PCG64(seed))
    if style == "justice":
        median, sigma, low, high = JUSTICE_WORDS
        lengths = np.clip(nprng.lognormal(math.log(median), sigma, size=n), low, high).astype(int)
    else:
        lengths = np.clip(nprng.lognormal(math.log(88), 0.42, size=n), 30, 220).astype(int)
    justice = style == "justice"
    rows, rationales = [], []
    for i in range(n):
        case = _draw_case(rng, JUSTICE_AREAS if justice else AREAS)
        year = rng.randint(1955, 2021)
        sentences = _facts(rng, case, year, int(lengths[i]), reuse_filler=justice)
        if area_rng is not None:
            sentences = _with_area_signal(area_rng, case, year, sentences,
                                          per_words=JUSTICE_WORDS_PER_TERM if justice else 0)
        facts = _html(rng, sentences)
        win = bool(nprng.random() < case.prob)
        label = "" if nprng.random() < BLANK_LABEL_RATE else ("TRUE" if win else "FALSE")
        majority = int(nprng.integers(5, 10))
        docket = f"{year % 100:02d}-{rng.randint(1, 1999)}"
        case_id = 50000 + 7 * i + rng.randint(0, 6)
        rows.append({
            "ID": case_id, "name": f"{case.first_party} v. {case.second_party}",
            "href": f"https://api.oyez.org/cases/{year}/{docket}", "docket": docket, "term": year,
            "first_party": case.first_party, "second_party": case.second_party, "facts": facts,
            "facts_len": len(facts), "majority_vote": majority, "minority_vote": 9 - majority,
            "first_party_winner": label, "decision_type": "majority opinion",
            "disposition": ("reversed" if win else "affirmed") if label else "",
            "issue_area": case.area if area_rng is None or area_rng.random() >= BLANK_LABEL_RATE else "",
        })
        rationales.append({"ID": case_id, "rule_prob": round(case.prob, 6),
                           "cues": [{"cue": f, "phrase": p} for f, p in case.deciding]})
    n_dup = int(round(n * DUPLICATE_RATE))
    for j, src in enumerate(sorted(rng.sample(range(n), min(n_dup, n)))):
        dup = dict(rows[src], ID=50000 + 7 * n + j)  # the same case filed under a second ID
        rows.append(dup)
        rationales.append(dict(rationales[src], ID=dup["ID"]))
    return pd.DataFrame(rows, columns=COLUMNS), rationales


def rationales_path(csv_path: str | Path) -> Path:
    """The side file `<stem>_rationales.jsonl` next to a synthetic csv."""
    p = Path(csv_path)
    return p.with_name(f"{p.stem}_rationales.jsonl")


def generate_justice_csv(path: str | Path, n: int, seed: int, task: str = "outcome", style: str = "short"
                         ) -> pd.DataFrame:
    """Write n synthetic cases to a JUSTICE-schema csv at path plus its rationale side file; return the frame."""
    df, rationales = generate_cases(n, seed, task, style)
    path = Path(path)
    df.to_csv(path, index=True, lineterminator="\n", encoding="utf-8")
    with open(rationales_path(path), "w", encoding="utf-8", newline="\n") as fh:
        for rec in rationales:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return df
