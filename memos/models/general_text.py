"""Fixed general text that distillation uses to keep an adapter local (DESIGN.md, "Parametric").

Two disjoint sets, written for memos (no data set is downloaded), about everyday and encyclopaedic topics that no
distilled memory is about:

- :data:`REPLAY`: seen during training. The adapter is penalised for moving the base model's next-token
  distribution on these (a KL term, see ``memos.models.distill``); half are chat turns, so the chat behaviour the
  adapter is used with is held in place too.
- :data:`LOCALITY`: never trained on. The base model's mean token loss on these, with and without the adapter, is
  the locality measurement stored with every adapter.
"""

from __future__ import annotations

REPLAY_TEXT: tuple[str, ...] = (
    "Water boils at one hundred degrees Celsius at sea level, and at a lower temperature on a high mountain.",
    "The heart pumps blood through the arteries to every part of the body and back through the veins.",
    "A good loaf of bread needs flour, water, salt and yeast, and enough time for the dough to rise.",
    "Many birds fly south in autumn to spend the winter where food is easier to find.",
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Photosynthesis lets plants turn sunlight, water and carbon dioxide into sugar and oxygen.",
    "She packed a raincoat because the forecast said there would be showers in the afternoon.",
    "The Pacific is the largest and deepest of the oceans on Earth.",
    "To change a flat tyre, loosen the nuts, lift the car with a jack, and swap the wheel for the spare.",
    "Regular exercise and enough sleep help people stay healthy and concentrate better.",
    "The train was delayed by twenty minutes, so the passengers waited on the platform.",
    "Computers store information as bits, each of which is either a zero or a one.",
)

REPLAY_CHAT: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "The capital of France is Paris."),
    ("How many days are there in a week?", "There are seven days in a week."),
    ("What do bees make?", "Bees make honey from the nectar of flowers."),
    ("Can you suggest a healthy breakfast?", "Oatmeal with fresh fruit and a glass of water is a healthy breakfast."),
    ("What colour is the sky on a clear day?", "On a clear day the sky is blue."),
    ("How do I say thank you in Spanish?", "In Spanish, thank you is \"gracias\"."),
    ("Why do we have seasons?", "Seasons happen because the Earth's axis is tilted as it orbits the Sun."),
    ("What is two plus two?", "Two plus two is four."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("How can I improve my writing?", "Read widely, write every day and ask others for honest feedback."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
)

LOCALITY_TEXT: tuple[str, ...] = (
    "The Moon orbits the Earth about once every twenty-seven days, and the same side always faces us.",
    "In the morning the market fills with people buying vegetables, fish and fresh flowers.",
    "Mountains are often formed when two plates of the Earth's crust push against each other.",
    "He forgot his umbrella at home, so he waited under the bus shelter until the rain stopped.",
    "Learning a new language takes patience, practice and a lot of listening.",
    "The museum's new exhibition shows paintings from the nineteenth century.",
    "Electric cars use batteries instead of petrol, and they are charged from the power grid.",
    "A balanced diet includes vegetables, fruit, grains and a source of protein.",
    "The river flows through the valley and into the sea near a small fishing town.",
    "Children in many countries start school when they are five or six years old.",
    "Thunder is the sound made by lightning as it rapidly heats the air around it.",
    "The chef tasted the soup, added a pinch of salt and let it simmer for another ten minutes.",
    "Most plants need light, water and nutrients from the soil to grow.",
    "The meeting was moved to the afternoon so that everyone could attend.",
    "Glass is made by melting sand at a very high temperature and letting it cool.",
    "The city built a new bridge to reduce traffic on the old road along the river.",
)
